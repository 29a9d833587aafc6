"""Hosts in network namespaces on one private switch, for tests of a fleet over a real network.

Each host is a namespace with one veth into a bridge that lives in a namespace of its own, so
nothing is added to the machine's own network: the hosts reach each other at their addresses
in `SUBNET` and nothing else. Processes join a host with `ip netns exec`; the test's own
clients join it through `Host.run`, an event loop in a thread that entered the namespace
(a network namespace belongs to a thread, and threads it starts inherit it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

SUBNET = "10.213.7"  # a /24 used only inside the namespaces a Network creates
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


class NetnsUnavailable(RuntimeError):
    """This machine cannot make the namespaces (no iproute2, not root, a kernel without them)."""


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")


def _enter(ns: str) -> None:
    """Move the calling thread into namespace `ns`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"{NETNS_DIR}/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Host:
    """One machine of the fleet: a namespace with one address."""

    name: str
    ns: str
    addr: str
    _thread: concurrent.futures.ThreadPoolExecutor | None = field(default=None, repr=False)

    def argv(self, *argv: str) -> list[str]:
        """`argv` run on this host."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.argv(*argv), **kw)

    def call(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        kw.setdefault("timeout", 120)
        return subprocess.run(self.argv(*argv), text=True, stdin=subprocess.DEVNULL, **kw)

    def run(self, coro: Callable[[], Coroutine[Any, Any, T]]) -> concurrent.futures.Future[T]:
        """Run `coro()` to its end on an event loop of this host; the future has its result."""
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix=f"netns-{self.name}",
                initializer=_enter, initargs=(self.ns,))
        return self._thread.submit(asyncio.run, coro())

    async def within(self, coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """`run`, awaited from another event loop."""
        return await asyncio.wrap_future(self.run(coro))

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True,
                             timeout=30).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def shutdown(self, grace: float = 20.0) -> None:
        """End every process on this host (they were all started here by the test): SIGTERM,
        then SIGKILL for what is left after `grace` seconds."""
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)
            self._thread = None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if not pids:
                return
            with contextlib.suppress(TimeoutError):
                _wait_gone(self, timeout=grace if sig == signal.SIGTERM else 10)


def _wait_gone(host: Host, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while host.pids():
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes still run on {host.name}")
        time.sleep(0.05)


class Network:
    """Hosts named `names`, at SUBNET.1, .2, ... in that order, on one bridge.

    Use as a context manager: every namespace (and so every link) is gone afterwards,
    whatever happened inside, and every process left on a host is ended first.
    """

    def __init__(self, names: Sequence[str], subnet: str = SUBNET) -> None:
        self.tag = secrets.token_hex(3)
        self.subnet = subnet
        self.switch = f"mlrb-{self.tag}-sw"
        self.hosts = {n: Host(n, f"mlrb-{self.tag}-{i}", f"{subnet}.{i + 1}")
                      for i, n in enumerate(names)}
        self._made: list[str] = []

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Network:
        if not self._made:  # made already when the caller checked it could be
            try:
                self.create()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        """Make the switch and the hosts; NetnsUnavailable says why this machine cannot."""
        if shutil.which("ip") is None:
            raise NetnsUnavailable("the ip command (iproute2) is not installed")
        self._add_ns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts.values()):
            self._add_ns(host.ns)
            port = f"p{i}"
            # both ends made in one step: the peer lands in the host's namespace as eth0
            _ip("-n", self.switch, "link", "add", port, "type", "veth",
                "peer", "name", "eth0", "netns", host.ns)
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
            _ip("-n", host.ns, "link", "set", "eth0", "up")
            _ip("-n", host.ns, "link", "set", "lo", "up")

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._made.append(ns)

    def close(self) -> None:
        for host in reversed(self.hosts.values()):  # clients before the servers they use
            if host.ns in self._made:
                host.shutdown()
        for ns in reversed(self._made):
            with contextlib.suppress(NetnsUnavailable):
                _ip("netns", "del", ns)  # its veth ends go with it
        self._made.clear()


def tcp_open(addr: str, port: int) -> bool:
    """Whether something accepts on addr:port, from the calling thread's namespace."""
    try:
        with socket.create_connection((addr, port), timeout=0.5):
            return True
    except OSError:
        return False


def namespaces_named(tag: str) -> list[str]:
    """The namespaces of this machine whose name holds `tag` (for the teardown's check)."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if tag in n)
    except FileNotFoundError:
        return []


__all__ = ["SUBNET", "Host", "Network", "NetnsUnavailable", "namespaces_named", "tcp_open"]
