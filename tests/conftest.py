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

import pytest

from runner.embedded_broker import find_mosquitto, free_port

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


class Mosquitto:
    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.proc = proc
        self.url = f"mqtt://127.0.0.1:{port}"


def start_mosquitto(tmp: Path) -> Mosquitto:
    exe = find_mosquitto()
    require(exe is not None, "mosquitto")
    assert exe is not None
    port = free_port()
    conf = tmp / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 100000\nmax_inflight_messages 1000\n"
    )
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port(port)
    return Mosquitto(port, proc)


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
