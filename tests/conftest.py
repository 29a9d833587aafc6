"""Shared fixtures. Tests drive real parts: a real Mosquitto, a real Docker engine.

Where a real part is missing, a test skips on a developer's machine but FAILS under CI
(CI=true), so a skip never hides a missing part there.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import aiomqtt
import pytest

from runner.broker_access import AccountStore, Credential
from runner.bus import BusConfig
from runner.embedded_broker import find_mosquitto, free_port
from runner.events import Event
from runner.journal import JournalReader

T = TypeVar("T")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip locally, fail in CI, when a real part the test needs is absent."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but is not available", pytrace=False)
    pytest.skip(f"{what} is not available")


def describe(cond: Callable[..., object]) -> str:
    """A condition's source line, for a timeout message that says what was awaited."""
    try:
        source = inspect.getsource(cond).strip()
    except (OSError, TypeError):
        return repr(cond)
    return source if len(source) <= 200 else source[:200] + "..."


async def until(cond: Callable[[], T | Awaitable[T]], what: str = "", *, timeout: float = 10.0,
                interval: float = 0.01,
                pause: Callable[[float], Awaitable[object]] = asyncio.sleep) -> T:
    """Poll `cond()` (awaited when it returns an awaitable) until its value is truthy; return it.

    `pause` is how the wait yields between polls: `pilot.pause` lets a Textual app process
    its messages. On timeout the AssertionError names `what` (or the condition's source).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if loop.time() > deadline:
            raise AssertionError(f"not met within {timeout:g} s: {what or describe(cond)}")
        await pause(interval)


def until_blocking(cond: Callable[[], T], what: str = "", *, timeout: float = 10.0,
                   interval: float = 0.05) -> T:
    """`until` for a test or fixture that runs outside an event loop."""
    return asyncio.run(until(cond, what, timeout=timeout, interval=interval))


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 10.0) -> None:
    until_blocking(lambda: _listens(port), f"something to listen on 127.0.0.1:{port}", timeout=timeout)


# the accounts of a test broker: runner accounts are named for the runner ids tests use
TEST_RUNNERS = ("h", "host-a", "host-b", "gpu-host-a", "gpu-host-b", "gpu-host-1")
TEST_PREFIXES = ("mlrb/v1", "lab/v9")


class Mosquitto:
    def __init__(self, port: int, proc: subprocess.Popen[bytes],
                 accounts: dict[str, Credential]) -> None:
        self.port = port
        self.proc = proc
        self.url = f"mqtt://127.0.0.1:{port}"
        self.accounts = accounts

    def config(self, who: str = "operator", prefix: str = "mlrb/v1") -> BusConfig:
        """A BusConfig for account `who` (a runner id, or "operator" / "viewer")."""
        cred = self.accounts[who]
        return BusConfig(self.url, prefix, username=cred.username, password=cred.password)


def raw_client(config: BusConfig, **kw: object) -> aiomqtt.Client:
    """A plain aiomqtt client with `config`'s account: a test's stand-in for another party."""
    host, port = config.host_port()
    return aiomqtt.Client(host, port, username=config.username, password=config.password,
                          tls_context=config.tls_context(), protocol=aiomqtt.ProtocolVersion.V5,
                          **kw)  # type: ignore[arg-type]


def start_mosquitto(tmp: Path) -> Mosquitto:
    """Mosquitto with authentication and the ACL on, as a fleet's broker would be."""
    exe = find_mosquitto()
    require(exe is not None, "mosquitto")
    assert exe is not None
    port = free_port()
    store = AccountStore(tmp / f"mosquitto-{port}", TEST_PREFIXES)
    accounts = {"operator": store.add("tester", "operator"),
                "viewer": store.add("watcher", "viewer")}
    accounts.update({name: store.add(name, "runner") for name in TEST_RUNNERS})
    conf = tmp / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n"
        f"password_file {store.passwd_path}\nacl_file {store.acl_path}\n"
        + ("user root\n" if os.geteuid() == 0 else "")
        + "max_queued_messages 100000\nmax_inflight_messages 1000\n"
    )
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port(port)
    return Mosquitto(port, proc, accounts)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    m = start_mosquitto(tmp_path)
    yield m
    m.proc.terminate()
    m.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    try:
        import docker

        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        require(False, f"a Docker engine ({exc.__class__.__name__})")
    return client


@pytest.fixture
def mlrb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "mlrb-home"
    monkeypatch.setenv("MLRB_HOME", str(home))
    return home


def alive(pid: int) -> bool:
    """Running, not merely a zombie that nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids_naming(needle: str) -> list[int]:
    """The live processes whose command line holds `needle`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def tiny_train_script() -> str:
    """The tiny_train fixture's training script (its baseline's TRAIN), for a stand-in model to write."""
    from importlib import util

    path = Path(__file__).parent / "fixtures" / "tasks" / "tiny_train" / "baseline.py"
    spec = util.spec_from_file_location("tiny_baseline", path)
    assert spec is not None and spec.loader is not None
    mod = util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return str(mod.TRAIN)


def journal_events(db: Path, run: str) -> list[Event]:
    """A run's events as its journal holds them."""
    reader = JournalReader(db)
    try:
        return reader.events(run, 0, 100_000)
    finally:
        reader.close()
