"""Which sandbox a run gets: Docker whenever an engine answers, else the local fallback.

`auto` never fails for want of Docker: it returns a LocalSandbox, whose `isolated` is False,
and the caller warns the operator. Forcing `docker` without an engine is a clear error.
"""

from __future__ import annotations

import contextlib
from typing import Any

from runner.docker_sandbox import DockerSandbox
from runner.local_sandbox import LocalSandbox
from runner.sandbox import Sandbox, SandboxError, SandboxSpec

BACKENDS = ("auto", "docker", "local")
PING_TIMEOUT_S = 3


class SandboxUnavailable(SandboxError):
    """The sandbox backend that was asked for cannot be had on this host."""


def _engine() -> tuple[Any, str]:
    """A Docker client that answered a ping, or None and why not."""
    try:
        import docker

        client = docker.from_env(timeout=PING_TIMEOUT_S)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine here"
        reason = str(exc).strip() or exc.__class__.__name__
        return None, f"no Docker engine answers ({reason[:300]})"
    # The ping used a short timeout; the sandbox's own calls (pulls, big execs) need longer.
    client.api.timeout = 120
    return client, ""


def docker_available() -> tuple[bool, str]:
    """(True, "") when a Docker engine answers a ping within a few seconds, else (False, why)."""
    client, reason = _engine()
    if client is None:
        return False, reason
    client.close()
    return True, ""


def create_sandbox(spec: SandboxSpec, backend: str = "auto") -> Sandbox:
    """A sandbox for `spec`, not yet started. `auto`: Docker when it answers, else local."""
    if backend not in BACKENDS:
        raise SandboxUnavailable(f"unknown sandbox backend {backend!r}: use auto, docker or local")
    if backend == "local":
        return LocalSandbox(spec)
    client, reason = _engine()
    if client is not None:
        return DockerSandbox(spec, client=client)
    if backend == "docker":
        raise SandboxUnavailable(f"the docker sandbox was asked for but {reason}; start the "
                                 "Docker daemon or choose the local backend")
    return LocalSandbox(spec)


def stop_orphans(journal: str, live: set[str]) -> list[str]:
    """Remove the containers labelled with `journal` whose run is not in `live`; their names.
    Without a Docker engine there is nothing to stop."""
    client, _reason = _engine()
    if client is None:
        return []
    stopped: list[str] = []
    try:
        for c in client.containers.list(all=True, filters={"label": f"mlrb.journal={journal}"}):
            if (c.labels or {}).get("mlrb.run") in live:
                continue
            with contextlib.suppress(Exception):
                c.remove(force=True)
                stopped.append(c.name)
        # an allowlist run's internal network, once its sandbox and proxy are gone
        from runner.egress_proxy import remove_network

        for net in client.networks.list(filters={"label": f"mlrb.journal={journal}"}):
            if (net.attrs.get("Labels") or {}).get("mlrb.run") not in live:
                with contextlib.suppress(Exception):
                    remove_network(client, net.name)
    finally:
        client.close()
    return stopped
