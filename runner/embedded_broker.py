"""The embedded broker of a one-machine setup: Mosquitto, spawned on a loopback port.

Mosquitto runs as a child process on a loopback port, configured from a file in the
workdir; if the port is taken another free one is chosen. A watch task restarts it on the
same port if it dies; persistence keeps retained messages and persistent sessions across a
restart; on Linux a parent-death signal ends it with its parent, even on `kill -9`. Without
Mosquitto there is no bus: `MosquittoMissing` says how to install it.

Nobody connects without a password: the first start generates three local accounts (the
runner, an operator named for the user, and a viewer), kept in `credentials.json` beside
the password and ACL files, all 0600 in a 0700 workdir; local consoles and the CLI read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from runner.broker_access import (
    AccountStore,
    Credential,
    Role,
    private_dir,
    private_file,
    topic_name,
    write_private,
)
from runner.bus import BusConfig

log = logging.getLogger(__name__)

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
START_TIMEOUT = 10.0
PORT_ATTEMPTS = 5
AUTOSAVE_INTERVAL = 2  # seconds: what a kill -9 can lose of retained messages and sessions
RESTART_BACKOFF_MIN, RESTART_BACKOFF_MAX = 0.1, 2.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# one line: the CLI prints it as its error
INSTALL_HINT = ("Mosquitto is required for the bus and is not installed: apt-get install mosquitto "
                "(Debian), brew install mosquitto (Homebrew), or run its container image "
                "(docker run -d -p 1883:1883 eclipse-mosquitto mosquitto -c /mosquitto-no-auth.conf) "
                "and set MLRB_BUS_URL=mqtt://127.0.0.1:1883")


class BrokerError(RuntimeError):
    """The embedded broker could not start."""


class MosquittoMissing(BrokerError):
    """No `mosquitto` executable was found; the message says how to install it."""

    def __init__(self) -> None:
        super().__init__(INSTALL_HINT)


def find_mosquitto() -> str | None:
    """The `mosquitto` executable: MLRB_MOSQUITTO when set (and only there), else PATH or sbin."""
    override = os.environ.get("MLRB_MOSQUITTO")
    if override:
        return override if os.access(override, os.X_OK) else None
    exe = shutil.which("mosquitto")
    if exe:
        return exe
    for cand in MOSQUITTO_CANDIDATES:
        if Path(cand).exists():
            return cand
    return None


def local_runner_name() -> str:
    """The embedded runner's account (and runner id): this host's name."""
    return topic_name(socket.gethostname())


def _operator_name() -> str:
    """The local operator account: named once, at the first start, as `default_operator()`
    says; from then on a command is recorded under it whatever its payload claims."""
    from runner.control import default_operator

    return topic_name(default_operator())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel SIGTERM the child when its parent dies (Linux only).

    The signal fires when the spawning thread exits, so the broker is spawned from the event
    loop's thread, never a worker thread. Elsewhere there is no such signal: None, and the
    child stays in the parent's process group instead.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


def _own_user() -> str:
    # mosquitto started as root drops to user "mosquitto", which clears the parent-death
    # signal and cannot write the workdir; naming our own user keeps both
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return "root" if os.geteuid() == 0 else ""


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class EmbeddedBroker:
    """Spawns `mosquitto` on a free loopback port; MosquittoMissing when it is not installed."""

    kind = "mosquitto"

    def __init__(self, workdir: Path, port: int | None = None, *, prefix: str = "mlrb/v1",
                 runner: str | None = None, users: Mapping[str, Role] | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or 0
        self.url = ""
        self.prefix = prefix.strip("/")
        # the three local accounts, by role; `users` adds more (each with its own password)
        self.local: dict[str, str] = {"runner": runner or local_runner_name(),
                                      "operator": _operator_name()}
        self.local["viewer"] = f"{self.local['operator']}-viewer"
        self.extra: dict[str, Role] = dict(users or {})
        self.credentials_path = self.workdir / "credentials.json"
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self.restarts = 0  # how often the watch brought a dead mosquitto back

    async def start(self) -> str:
        """Start the broker; return its URL once it accepts connections."""
        exe = find_mosquitto()
        if exe is None:
            raise MosquittoMissing()
        wanted = self.port or None
        last = ""
        for attempt in range(PORT_ATTEMPTS):
            # the asked-for port first; if it is taken, any free one
            port = wanted if (attempt == 0 and wanted and port_is_free(wanted)) else free_port()
            if attempt == 0 and wanted and port != wanted:
                log.warning("broker: port %d is taken; using %d", wanted, port)
            try:
                await self._start_mosquitto(exe, port)
            except _PortTaken as exc:
                last = str(exc)
                continue
            self.port = port
            self.url = f"mqtt://127.0.0.1:{port}"
            self._write_credentials_url()
            log.info("broker: %s on %s", self.kind, self.url)
            self._watch = asyncio.create_task(self._supervise(exe), name="broker-watch")
            return self.url
        raise BrokerError(f"no free port for the broker after {PORT_ATTEMPTS} attempts: {last}")

    def credential(self, name: str) -> Credential:
        """The password of one of this broker's accounts (a local one, or one of `users`)."""
        found = self._credentials().get(name)
        if found is None:
            raise KeyError(f"no account {name!r} on the embedded broker")
        return found

    def bus_config(self, who: str = "operator") -> BusConfig:
        """How a client reaches this broker as `who`: a role (its local account) or a name."""
        cred = self.credential(self.local.get(who, who))
        return BusConfig(self.url, self.prefix, username=cred.username, password=cred.password)

    def _saved_local(self) -> dict[str, str]:
        try:
            raw = json.loads(self.credentials_path.read_text())
        except (OSError, ValueError):
            return {}
        local = raw.get("local") if isinstance(raw, dict) else None
        return {str(k): str(v) for k, v in local.items()} if isinstance(local, dict) else {}

    def _credentials(self) -> dict[str, Credential]:
        try:
            raw = json.loads(self.credentials_path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict):
            return {}
        return {n: Credential(n, str(v["password"])) for n, v in raw.get("accounts", {}).items()
                if isinstance(v, dict) and "password" in v}

    def _ensure_accounts(self) -> None:
        """Generate what is missing; existing passwords stay (clients of a restart keep working)."""
        private_dir(self.workdir)
        store = AccountStore(self.workdir, (self.prefix,))
        known = self._credentials()
        for role, name in self._saved_local().items():  # people's accounts are named once
            if role in ("operator", "viewer") and name in known:
                self.local[role] = name
        wanted: dict[str, Role] = {**{n: r for r, n in self.local.items()},  # type: ignore[misc]
                                   **self.extra}
        accounts = store.load()
        roles = {n: a.role for n, a in accounts.items()}
        if all(n in known and roles.get(n) == r for n, r in wanted.items()) and \
                store.passwd_path.exists() and store.acl_path.exists():
            return
        for name, role in wanted.items():
            cred = known.get(name)
            known[name] = store.add(name, role, cred.password if cred else None)
        write_private(self.credentials_path, json.dumps({
            "url": self.url, "prefix": self.prefix, "local": self.local,
            "accounts": {n: {"role": wanted.get(n, roles.get(n)), "password": c.password}
                         for n, c in sorted(known.items())}}, indent=2))

    def _write_credentials_url(self) -> None:
        # the URL beside the passwords lets a local client find the broker without daemon.json
        try:
            raw = json.loads(self.credentials_path.read_text())
        except (OSError, ValueError):
            return
        if raw.get("url") != self.url:
            raw["url"] = self.url
            write_private(self.credentials_path, json.dumps(raw, indent=2))

    async def _start_mosquitto(self, exe: str, port: int) -> None:
        self._ensure_accounts()
        conf = self.workdir / "mosquitto.conf"
        user = _own_user()
        store = AccountStore(self.workdir)
        write_private(conf,
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {store.passwd_path.resolve()}\n"
            f"acl_file {store.acl_path.resolve()}\n"
            + (f"user {user}\n" if user else "")
            + "persistence true\n"
            f"persistence_location {self.workdir.resolve()}/\n"
            "persistence_file mosquitto.db\n"
            f"autosave_interval {AUTOSAVE_INTERVAL}\n"
            # a console that falls behind must not lose events of a burst
            "max_queued_messages 100000\n"
            "max_inflight_messages 1000\n"
            "max_packet_size 8388608\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )
        errlog = private_file(self.workdir / "mosquitto.log")
        hook = _die_with_parent()
        with open(errlog, "wb") as err:
            # with the parent-death signal, its own session keeps a terminal's Ctrl-C away
            # from it; without, it stays in our process group so it ends with the group
            proc = await asyncio.create_subprocess_exec(
                exe, "-c", str(conf), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=err, start_new_session=hook is not None,
                preexec_fn=hook)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        try:
            while loop.time() < deadline:
                if proc.returncode is not None:
                    break
                if await _accepts(port):
                    self._proc = proc
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.05)
        except BaseException:  # cancelled while it starts: leave no orphan behind
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
            raise BrokerError(f"mosquitto did not accept connections on port {port} "
                              f"within {START_TIMEOUT:.0f}s")
        stderr = errlog.read_text(errors="replace")[-2000:].strip()
        if "in use" in stderr.lower():
            raise _PortTaken(stderr)
        raise BrokerError(f"mosquitto exited with {proc.returncode} at start: {stderr}")

    async def _supervise(self, exe: str) -> None:
        """Until cancelled: wait for mosquitto to exit, then start it again on the same port."""
        while True:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            self.restarts += 1
            tail = _tail(self.workdir / "mosquitto.log")
            log.warning("broker: mosquitto exited with %s%s; restarting on port %d (restart %d)",
                        code, f" ({tail})" if tail else "", self.port, self.restarts)
            delay = RESTART_BACKOFF_MIN
            while True:
                try:
                    await self._start_mosquitto(exe, self.port)
                    break
                except (BrokerError, _PortTaken, OSError) as exc:  # the port may be briefly unusable
                    log.warning("broker: restart %d on port %d failed (%s); retrying in %.1fs",
                                self.restarts, self.port, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_BACKOFF_MAX)
            log.info("broker: mosquitto back on %s (restart %d)", self.url, self.restarts)

    async def stop(self) -> None:
        """Stop the watch first, so this exit is not restarted, then mosquitto."""
        if self._watch is not None:
            watch, self._watch = self._watch, None
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if self._proc is not None:
            proc, self._proc = self._proc, None
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _PortTaken(Exception):
    pass


def _tail(path: Path) -> str:
    try:
        return " ".join(path.read_text(errors="replace")[-500:].split())
    except OSError:
        return ""
