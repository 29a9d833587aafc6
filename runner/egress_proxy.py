"""The egress proxy of a `network = "allowlist"` run: squid between the sandbox and the world.

The sandbox sits alone on an internal Docker network (`mlrb-net-<run>`), which has no route
out. The proxy container (`mlrb-proxy-<run>`, Debian's squid) is on that network and on an
outside one (Docker's `bridge` unless `MLRB_PROXY_NETWORK` names another), and passes only
the task's hosts: plain HTTP to any port of them, CONNECT to their port 443. The sandbox gets
HTTP(S)_PROXY pointing at it. Squid writes one access-log line per request to its stdout;
`follow` turns each into a `net.request` event (host, bytes, allowed or refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
import tarfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import LogConfig

from runner.image import FINGERPRINT_LABEL, ImageError, default_base
from runner.sandbox import SandboxError
from tasks.api import HOST_RE

DEFAULT_PROXY_IMAGE = "mlrb-proxy:latest"
CONTEXT_DIR = Path(__file__).with_name("proxy_image")
PORT = 3128
CONF_PATH = "/etc/squid/mlrb.conf"
LOG_TAG = "MLRB"  # marks access-log lines among squid's other output
READY_TIMEOUT_S = 30.0
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]")


class ProxyError(SandboxError):
    """The egress proxy could not be set up or followed; the message is for the operator."""


def proxy_image() -> str:
    return os.environ.get("MLRB_PROXY_IMAGE") or DEFAULT_PROXY_IMAGE


def outside_network() -> str:
    """The Docker network the proxy reaches the world through."""
    return os.environ.get("MLRB_PROXY_NETWORK") or "bridge"


def network_name(run: str) -> str:
    return "mlrb-net-" + _NAME_BAD.sub("-", run)[:100]


def proxy_name(run: str) -> str:
    return "mlrb-proxy-" + _NAME_BAD.sub("-", run)[:100]


def valid_host(host: str) -> bool:
    return bool(HOST_RE.match(host))


def squid_conf(hosts: tuple[str, ...]) -> str:
    """squid.conf for a proxy that passes `hosts` only and logs every request to stdout."""
    bad = [h for h in hosts if not valid_host(h)]
    if bad or not hosts:
        raise ProxyError(f"not a host list squid can take: {bad or 'empty'}")
    return "\n".join([
        f"http_port {PORT}",
        "pid_filename none",
        "pinger_enable off",
        "cache deny all",
        "cache_mem 8 MB",
        "shutdown_lifetime 1 seconds",
        "visible_hostname mlrb-proxy",
        "via off",
        "forwarded_for delete",
        # one line per request: time, method, host, port, status, squid's verdict, bytes, ms
        f"logformat mlrb {LOG_TAG} %ts.%03tu %rm %>rd %>rP %>Hs %Ss %>st %<st %tr",
        "access_log stdio:/dev/stdout mlrb",
        "cache_log stdio:/dev/stderr",
        f"acl allowed dstdomain {' '.join(hosts)}",
        "acl CONNECT method CONNECT",
        "acl tls_port port 443",
        "http_access deny CONNECT !tls_port",
        "http_access allow allowed",
        "http_access deny all",
        "",
    ])


@dataclass(frozen=True)
class NetRequest:
    """One request the sandbox made through the proxy, as squid logged it."""

    at: float  # when the proxy logged it (Unix time)
    method: str
    host: str
    port: int | None
    status: int | None  # the HTTP status the sandbox got (squid's 403 when refused)
    allowed: bool
    result: str  # squid's verdict, e.g. TCP_TUNNEL, TCP_MISS, TCP_DENIED
    sent_bytes: int | None  # from the sandbox
    received_bytes: int | None  # to the sandbox
    duration_ms: int | None

    def as_data(self) -> dict[str, Any]:
        return {"method": self.method, "host": self.host, "port": self.port, "status": self.status,
                "allowed": self.allowed, "result": self.result, "sent_bytes": self.sent_bytes,
                "received_bytes": self.received_bytes, "duration_ms": self.duration_ms}


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def parse_access_line(line: str) -> NetRequest | None:
    """A request from one line of the proxy's output; None for any other line."""
    parts = line.strip().split(" ")
    if len(parts) != 10 or parts[0] != LOG_TAG:
        return None
    _tag, ts, method, host, port, status, result, sent, received, ms = parts
    try:
        at = float(ts)
    except ValueError:
        return None
    verdict = result[:40]
    return NetRequest(at=at, method=method[:20], host=host[:253], port=_int(port),
                      status=_int(status) or None, allowed="DENIED" not in verdict,
                      result=verdict, sent_bytes=_int(sent), received_bytes=_int(received),
                      duration_ms=_int(ms))


def proxy_env(run: str) -> tuple[tuple[str, str], ...]:
    """The sandbox's environment that sends its HTTP(S) through the run's proxy."""
    url = f"http://{proxy_name(run)}:{PORT}"
    no_proxy = "localhost,127.0.0.1,::1"
    return (("HTTP_PROXY", url), ("HTTPS_PROXY", url), ("http_proxy", url), ("https_proxy", url),
            ("NO_PROXY", no_proxy), ("no_proxy", no_proxy))


# -- the image ---------------------------------------------------------------------------------
def fingerprint(base_id: str) -> str:
    h = hashlib.sha256((CONTEXT_DIR / "Dockerfile").read_bytes() + b"\0" + base_id.encode())
    return h.hexdigest()[:32]


def build_proxy_image(tag: str | None = None, base: str | None = None, force: bool = False,
                      log: Callable[[str], None] = print, client: Any = None) -> str:
    """Build the proxy image: squid from the Debian mirror on the base (reused when up to date)."""
    tag, base = tag or proxy_image(), base or default_base()
    try:
        client = client or docker.from_env(timeout=600)
        base_image = client.images.get(base)
    except docker.errors.ImageNotFound:
        raise ImageError(f"the base image {base} is missing: run `mlrb image base` first") from None
    except docker.errors.DockerException as exc:
        raise ImageError(f"no Docker engine answers: {exc}") from None
    want = fingerprint(base_image.id)
    if not force:
        with contextlib.suppress(docker.errors.ImageNotFound):
            labels = (client.images.get(tag).attrs.get("Config") or {}).get("Labels") or {}
            if labels.get(FINGERPRINT_LABEL) == want:
                log(f"{tag} is up to date (fingerprint {want})")
                return tag
    log(f"building {tag} from {base} (squid from the Debian mirror)")
    try:
        for chunk in client.api.build(path=str(CONTEXT_DIR), tag=tag, buildargs={"BASE": base},
                                      labels={FINGERPRINT_LABEL: want}, rm=True, forcerm=True,
                                      decode=True):
            if "error" in chunk:
                raise ImageError(f"building {tag} failed: {str(chunk['error']).strip()}")
            text = str(chunk.get("stream", "")).rstrip()
            if text:
                log(text)
    except docker.errors.APIError as exc:
        raise ImageError(f"building {tag} failed: {exc.explanation or exc}") from None
    log(f"built {tag}")
    return tag


# -- one run's proxy ---------------------------------------------------------------------------
class EgressProxy:
    """A run's internal network and the squid container that is its only way out."""

    def __init__(self, run: str, hosts: tuple[str, ...], *, labels: tuple[tuple[str, str], ...] = (),
                 image: str | None = None, outside: str | None = None,
                 client: docker.DockerClient | None = None) -> None:
        self.run = run
        self.hosts = hosts
        self.labels = {"mlrb.run": run, "mlrb.role": "proxy", **dict(labels)}
        self.image = image or proxy_image()
        self.outside = outside or outside_network()
        self.network = network_name(run)
        self.name = proxy_name(run)
        self._client = client
        self._container: Any = None
        self._stream: Any = None
        self._claimed = False  # started or adopted here: its leftovers are ours to remove

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env(timeout=60)
            except docker.errors.DockerException as exc:
                raise ProxyError(f"no Docker engine answers: {exc}") from None
        return self._client

    @property
    def env(self) -> tuple[tuple[str, str], ...]:
        return proxy_env(self.run)

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    def _start(self) -> None:
        conf = squid_conf(self.hosts)
        client = self._docker()
        self._claimed = True
        self._remove_leftovers(client)
        try:
            client.networks.get(self.outside)
        except docker.errors.NotFound:
            raise ProxyError(f"the proxy's outside network {self.outside!r} does not exist "
                             "(MLRB_PROXY_NETWORK)") from None
        try:
            client.networks.create(self.network, driver="bridge", internal=True,
                                   labels=dict(self.labels))
            container = client.containers.create(
                self.image, name=self.name, network=self.network, labels=dict(self.labels),
                cap_drop=["ALL"], security_opt=["no-new-privileges"], pids_limit=256,
                mem_limit=512 * 1024**2, hostname="mlrb-proxy", detach=True,
                # a day of requests stays bounded on the host; lines are journaled as they come
                log_config=LogConfig(type="json-file", config={"max-size": "20m", "max-file": "2"}))
        except docker.errors.ImageNotFound:
            self._remove_leftovers(client)
            raise ProxyError(f"the proxy image {self.image} is missing: run `mlrb image proxy` "
                             "first") from None
        except docker.errors.APIError as exc:
            self._remove_leftovers(client)
            raise ProxyError(f"cannot set up the egress proxy {self.name}: "
                             f"{exc.explanation or exc}") from None
        self._container = container
        try:
            container.put_archive("/etc/squid", _tar_of("mlrb.conf", conf.encode()))
            client.networks.get(self.outside).connect(container)
            container.start()
            self._wait_ready(container)
        except (docker.errors.APIError, ProxyError) as exc:
            self._remove_leftovers(client)
            self._container = None
            why = exc.explanation if isinstance(exc, docker.errors.APIError) else str(exc)
            raise ProxyError(f"cannot start the egress proxy {self.name}: {why}") from None

    def _wait_ready(self, container: Any) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            text = container.logs(stdout=False, stderr=True).decode("utf-8", "replace")
            if "Accepting HTTP Socket connections" in text:
                return
            container.reload()
            if container.status not in ("created", "running"):
                raise ProxyError(f"squid exited: {text.strip()[-500:] or container.status}")
            time.sleep(0.1)  # polling the log for squid's own "ready" line
        raise ProxyError(f"squid did not start listening within {READY_TIMEOUT_S:.0f}s")

    async def adopt(self) -> None:
        """Take over the proxy an earlier runner left running for this run."""
        await asyncio.to_thread(self._adopt)

    def _adopt(self) -> None:
        self._claimed = True
        try:
            container = self._docker().containers.get(self.name)
        except docker.errors.NotFound:
            raise ProxyError(f"the egress proxy {self.name} is gone") from None
        if (container.labels or {}).get("mlrb.run") != self.run or container.status != "running":
            raise ProxyError(f"the egress proxy {self.name} is not this run's, or not running")
        self._container = container

    async def follow(self, on_request: Callable[[NetRequest], Awaitable[None]],
                     since: float | None = None) -> None:
        """Call `on_request` for each request the proxy logs (from `since`, a Unix time), until
        the proxy stops."""
        container = self._container
        if container is None:
            raise ProxyError(f"the egress proxy {self.name} was never started")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[NetRequest | None] = asyncio.Queue()

        def pump() -> None:
            try:
                for line in self._lines(container, since):
                    req = parse_access_line(line)
                    # an adopted run's journal already holds what was logged before `since`
                    if req is not None and (since is None or req.at > since):
                        loop.call_soon_threadsafe(queue.put_nowait, req)
            except (docker.errors.APIError, OSError, ValueError):
                pass  # the stream broke: the proxy is gone
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        reader = loop.run_in_executor(None, pump)
        try:
            while (req := await queue.get()) is not None:
                await on_request(req)
        finally:
            stream = self._stream
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(reader), 5)

    def _lines(self, container: Any, since: float | None) -> Iterator[str]:
        kwargs: dict[str, Any] = {"stdout": True, "stderr": False, "stream": True, "follow": True}
        if since is not None:
            kwargs["since"] = int(since)  # whole seconds: the lines are filtered finer above
        self._stream = container.logs(**kwargs)
        pending = b""
        for chunk in self._stream:
            pending += chunk
            *whole, pending = pending.split(b"\n")
            for raw in whole:
                yield raw.decode("utf-8", "replace")
        if pending:
            yield pending.decode("utf-8", "replace")

    async def stop(self) -> None:
        """Remove the proxy and the run's network; safe to call twice."""
        if not self._claimed:
            return  # never started or adopted here: nothing of ours to remove
        await asyncio.to_thread(self._remove_leftovers, self._docker())
        self._container = None

    def _remove_leftovers(self, client: docker.DockerClient) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(self.name).remove(force=True)
        remove_network(client, self.network)


def remove_network(client: docker.DockerClient, name: str) -> None:
    """Remove a run's network, first unplugging whatever is still on it."""
    try:
        net = client.networks.get(name)
    except docker.errors.NotFound:
        return
    with contextlib.suppress(docker.errors.APIError):
        net.reload()
        for c in net.containers:
            with contextlib.suppress(docker.errors.APIError):
                net.disconnect(c, force=True)
        net.remove()


def _tar_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
