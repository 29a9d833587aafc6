"""Network policy "allowlist": the sandbox's only way out is a real squid that passes the
task's hosts, and every request it sees becomes a `net.request` event.

The upstream is a stand-in the test creates: a container on a Docker network of the test's
own, answering as `allowed.test` and `other.test`. Nothing else is reached.
"""

from __future__ import annotations

import asyncio
import shutil
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.agents.base import ScriptedAgent
from runner.docker_sandbox import DockerSandbox
from runner.egress_proxy import (
    EgressProxy,
    NetRequest,
    ProxyError,
    build_proxy_image,
    network_name,
    parse_access_line,
    proxy_name,
    remove_network,
    squid_conf,
)
from runner.events import Event
from runner.image import build_image
from runner.journal import Journal, JournalReader
from runner.sandbox import SandboxSpec
from runner.supervisor import RunRequest, RunSupervisor
from tasks.api import TaskSpecError, load_spec_file, load_task
from tests.conftest import until, until_blocking

BODY = "hello from the stand-in upstream"
TINY = Path(__file__).parent / "fixtures" / "tasks" / "tiny_train"
# the sandbox's probe: GET through the proxy, CONNECT through it, and a direct connection
PROBE = textwrap.dedent("""\
    import http.client, socket, sys, urllib.request
    what, host = sys.argv[1], sys.argv[2]
    try:
        if what == "get":
            print(urllib.request.urlopen(f"http://{host}/", timeout=10).read().decode())
        elif what == "connect":
            c = http.client.HTTPConnection("%(proxy)s", 3128, timeout=10)
            c.set_tunnel(host, 443)
            c.request("GET", "/")
            print("tunnel", c.getresponse().status)
        else:
            socket.create_connection((host, 80), timeout=5).close()
            print("connected")
    except Exception as exc:
        print("refused:", exc)
""")


# -- pure parts ----------------------------------------------------------------------------
def test_access_lines_become_requests() -> None:
    ok = parse_access_line("MLRB 1796134347.669 CONNECT allowed.test 443 200 TCP_TUNNEL 106 194 7")
    assert ok == NetRequest(at=1796134347.669, method="CONNECT", host="allowed.test", port=443,
                            status=200, allowed=True, result="TCP_TUNNEL", sent_bytes=106,
                            received_bytes=194, duration_ms=7)
    no = parse_access_line("MLRB 1796134347.659 GET other.test 80 403 TCP_DENIED 131 3398 0\n")
    assert no is not None and not no.allowed and no.status == 403 and no.host == "other.test"
    # squid's other output, and lines that do not fit, are not requests
    assert parse_access_line("2026/12/01 14:12:23| pinger: Initialising ICMP pinger ...") is None
    assert parse_access_line("MLRB not-a-time GET h 80 200 TCP_MISS 1 2 3") is None
    assert parse_access_line("MLRB 1.0 GET h 80") is None


def test_squid_conf_passes_only_the_listed_hosts() -> None:
    conf = squid_conf((".huggingface.co", "allowed.test"))
    assert "acl allowed dstdomain .huggingface.co allowed.test" in conf
    lines = conf.splitlines()
    assert lines.index("http_access allow allowed") < lines.index("http_access deny all")
    assert "http_access deny CONNECT !tls_port" in lines
    with pytest.raises(ProxyError):
        squid_conf(())
    with pytest.raises(ProxyError):
        squid_conf(("allowed.test\nhttp_access allow all",))


def _spec_file(tmp: Path, name: str, smoke_extra: str) -> Path:
    folder = tmp / name
    shutil.copytree(TINY, folder)
    text = (TINY / "task.toml").read_text().replace('name = "tiny_train"', f'name = "{name}"')
    text = text.replace("[smoke]\n", f"[smoke]\n{smoke_extra}\n")
    (folder / "task.toml").write_text(text)
    return folder / "task.toml"


def test_task_spec_validates_the_policy(tmp_path: Path) -> None:
    spec = load_spec_file(_spec_file(tmp_path, "netok",
                                     'network = "allowlist"\nallow_hosts = ["allowed.test", ".hf.co"]'))
    assert spec.scale("smoke").network == "allowlist"
    assert spec.scale("smoke").allow_hosts == ("allowed.test", ".hf.co")
    assert spec.scale("full").network == "none"  # the default
    cases = {
        "netnohosts": ('network = "allowlist"', "needs allow_hosts"),
        "netbadhost": ('network = "allowlist"\nallow_hosts = ["a b"]', "not host names"),
        "nethostsnone": ('allow_hosts = ["allowed.test"]', 'network is "none"'),
        "netbadkind": ('network = "open"', "smoke.network"),
    }
    for name, (extra, words) in cases.items():
        with pytest.raises(TaskSpecError, match=words):
            load_spec_file(_spec_file(tmp_path, name, extra))


def test_llm_efficiency_reaches_the_hub_at_full_scale_only() -> None:
    spec = load_task("llm_efficiency")
    assert spec.scale("smoke").network == "none"
    full = spec.scale("full")
    assert full.network == "allowlist"
    assert set(full.allow_hosts) == {".huggingface.co", ".hf.co"}
    assert spec.upstream is not None and "network" in spec.upstream.fields
    assert any("network" in d for d in spec.upstream.departures)


def test_the_timeline_shows_requests_escaped() -> None:
    from mlrb_tui.state import entry_for

    allowed = entry_for(Event("r1", 5, 1.0, "net.request", {
        "method": "CONNECT", "host": "huggingface.co", "port": 443, "status": 200,
        "allowed": True, "result": "TCP_TUNNEL", "sent_bytes": 900, "received_bytes": 2048}))
    assert allowed is not None and allowed.label == "net" and allowed.tone == "dim"
    assert allowed.text == "allowed CONNECT huggingface.co:443 200 2K in, 900B out"
    refused = entry_for(Event("r1", 6, 2.0, "net.request", {
        "method": "GET", "host": "evil\x1b[2J.test", "port": 80, "status": 403,
        "allowed": False, "result": "TCP_DENIED"}))
    assert refused is not None and refused.tone == "bad"
    assert refused.text == "REFUSED GET evil.test:80 403"
    assert "\x1b" not in refused.text


# -- real Docker, real squid ---------------------------------------------------------------
@pytest.fixture(scope="session")
def proxy_image(docker_client: Any) -> str:
    return build_proxy_image(log=lambda line: None, client=docker_client)


@pytest.fixture(scope="session")
def sandbox_image(docker_client: Any) -> str:
    return build_image(log=lambda line: None, client=docker_client)


class Upstream:
    def __init__(self, network: str, container: Any) -> None:
        self.network = network
        self.container = container

    @property
    def ip(self) -> str:
        self.container.reload()
        return str(self.container.attrs["NetworkSettings"]["Networks"][self.network]["IPAddress"])


@pytest.fixture
def upstream(docker_client: Any) -> Iterator[Upstream]:
    """A network of the test's own and an HTTP server on it answering as two hosts."""
    tag = uuid.uuid4().hex[:8]
    net = docker_client.networks.create(f"mlrb-test-out-{tag}", driver="bridge",
                                        labels={"mlrb.test": "netpolicy"})
    container = None
    try:
        serve = (f"mkdir -p /srv && echo '{BODY}' > /srv/index.html && cd /srv && "
                 "(python3 -u -m http.server 80 & python3 -u -m http.server 443 & wait)")
        container = docker_client.containers.create(
            "mlrb-base:bookworm", ["bash", "-c", serve], name=f"mlrb-test-up-{tag}",
            labels={"mlrb.test": "netpolicy"}, detach=True, network=net.name,
            networking_config={net.name: docker_client.api.create_endpoint_config(
                aliases=["allowed.test", "other.test"])})
        container.start()
        until_blocking(lambda: container.logs().decode().count("Serving HTTP") == 2,
                       "the stand-in upstream listens", timeout=30)
        yield Upstream(net.name, container)
    finally:
        if container is not None:
            container.remove(force=True)
        remove_network(docker_client, net.name)  # unplugs a proxy a failed test left on it


@pytest.fixture
async def fenced(tmp_path: Path, docker_client: Any, proxy_image: str, sandbox_image: str,
                 upstream: Upstream) -> AsyncIterator[tuple[EgressProxy, DockerSandbox, list[NetRequest]]]:
    """A sandbox whose only way out is a proxy that passes allowed.test, and what it logs."""
    run = f"net-{uuid.uuid4().hex[:8]}"
    proxy = EgressProxy(run, ("allowed.test",), image=proxy_image, outside=upstream.network,
                        client=docker_client)
    seen: list[NetRequest] = []

    async def record(req: NetRequest) -> None:
        seen.append(req)

    await proxy.start()
    follower = asyncio.create_task(proxy.follow(record))
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "probe.py").write_text(PROBE % {"proxy": proxy.name})
    sb = DockerSandbox(SandboxSpec(run=run, workspace=tmp_path / "ws", image=sandbox_image,
                                   env=proxy.env, docker_network=proxy.network),
                       client=docker_client)
    try:
        await sb.start()
        yield proxy, sb, seen
    finally:
        await sb.stop()
        await proxy.stop()
        await asyncio.wait_for(follower, 15)  # the log ends with the proxy


@pytest.mark.docker
async def test_allowed_host_passes_other_hosts_are_refused_and_recorded(
        fenced: tuple[EgressProxy, DockerSandbox, list[NetRequest]]) -> None:
    _proxy, sb, seen = fenced
    got = await sb.exec("python3 probe.py get allowed.test", timeout_s=60)
    assert got.output.strip() == BODY, got.output
    tunnel = await sb.exec("python3 probe.py connect allowed.test", timeout_s=60)
    assert tunnel.output.strip() == "tunnel 200", tunnel.output
    other = await sb.exec("python3 probe.py get other.test", timeout_s=60)
    assert other.output.startswith("refused: HTTP Error 403"), other.output
    other_tunnel = await sb.exec("python3 probe.py connect other.test", timeout_s=60)
    assert "refused:" in other_tunnel.output and "403" in other_tunnel.output, other_tunnel.output

    await until(lambda: len(seen) >= 4, "four requests logged", timeout=30)
    by = {(r.method, r.host): r for r in seen}
    assert by[("GET", "allowed.test")].allowed and by[("GET", "allowed.test")].status == 200
    assert (by[("GET", "allowed.test")].received_bytes or 0) > len(BODY)
    assert by[("CONNECT", "allowed.test")].allowed and by[("CONNECT", "allowed.test")].port == 443
    for method in ("GET", "CONNECT"):
        refused = by[(method, "other.test")]
        assert not refused.allowed and refused.status == 403 and refused.result == "TCP_DENIED"


@pytest.mark.docker
async def test_a_connection_that_bypasses_the_proxy_fails(
        fenced: tuple[EgressProxy, DockerSandbox, list[NetRequest]], upstream: Upstream) -> None:
    _proxy, sb, seen = fenced
    # by address: the internal network has no route to the upstream's network
    direct = await sb.exec(f"python3 probe.py direct {upstream.ip}", timeout_s=60)
    assert direct.output.startswith("refused:"), direct.output
    # by name: the upstream's names do not even resolve without the proxy
    named = await sb.exec("python3 probe.py direct allowed.test", timeout_s=60)
    assert named.output.startswith("refused:"), named.output
    # and a tool that ignores the proxy variables gets nowhere either
    unproxied = await sb.exec("env -u http_proxy -u HTTP_PROXY python3 probe.py get allowed.test",
                              timeout_s=60)
    assert unproxied.output.startswith("refused:"), unproxied.output
    assert seen == []  # none of them went through the proxy


@pytest.mark.docker
async def test_proxy_and_network_are_removed(docker_client: Any, proxy_image: str,
                                             upstream: Upstream) -> None:
    import docker.errors

    proxy = EgressProxy(f"net-{uuid.uuid4().hex[:8]}", ("allowed.test",), image=proxy_image,
                        outside=upstream.network, client=docker_client)
    await proxy.start()
    assert docker_client.networks.get(proxy.network).attrs["Internal"] is True
    await proxy.stop()
    await proxy.stop()  # twice is no error
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(proxy.name)
    with pytest.raises(docker.errors.NotFound):
        docker_client.networks.get(proxy.network)


@pytest.mark.docker
async def test_a_missing_outside_network_is_a_clear_error(docker_client: Any,
                                                          proxy_image: str) -> None:
    import docker.errors

    proxy = EgressProxy(f"net-{uuid.uuid4().hex[:8]}", ("allowed.test",), image=proxy_image,
                        outside="mlrb-no-such-network", client=docker_client)
    with pytest.raises(ProxyError, match="outside network 'mlrb-no-such-network' does not exist"):
        await proxy.start()
    with pytest.raises(docker.errors.NotFound):
        docker_client.networks.get(proxy.network)


# -- through the runner ------------------------------------------------------------------------
def _supervisor(tmp: Path, spec_path: Path, run: str, plan: list[dict[str, Any]],
                backend: str, journal: Journal, image: str) -> RunSupervisor:
    from runner.sandbox_factory import create_sandbox

    return RunSupervisor(
        RunRequest(run=run, task=load_spec_file(spec_path), scale="smoke", agent_kind="scripted"),
        journal=journal, publish=None,
        make_sandbox=lambda spec: create_sandbox(spec, backend=backend),
        agent=ScriptedAgent(plan), workspace=tmp / run / "workspace", runner_id="test",
        image=image)


def _remove_run(client: Any, run: str) -> None:
    for c in client.containers.list(all=True, filters={"label": f"mlrb.run={run}"}):
        c.remove(force=True)
    remove_network(client, network_name(run))


def _events(path: Path, run: str) -> list[Event]:
    reader = JournalReader(path)
    try:
        return reader.events(run, 0, 100_000)
    finally:
        reader.close()


@pytest.mark.docker
async def test_an_allowlist_run_records_each_request(
        tmp_path: Path, docker_client: Any, proxy_image: str, sandbox_image: str,
        upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLRB_PROXY_NETWORK", upstream.network)
    monkeypatch.setenv("MLRB_PROXY_IMAGE", proxy_image)
    spec_path = _spec_file(tmp_path, "tiny_net", 'network = "allowlist"\nallow_hosts = ["allowed.test"]')
    run = f"net-run-{uuid.uuid4().hex[:8]}"
    script = PROBE % {"proxy": proxy_name(run)}
    plan = [
        {"name": "write_file", "args": {"path": "probe.py", "content": script}},
        {"name": "bash", "args": {"command": "python3 probe.py get allowed.test", "timeout_s": 60}},
        {"name": "bash", "args": {"command": "python3 probe.py connect other.test", "timeout_s": 60}},
    ]
    journal = Journal(tmp_path / "j.db")
    try:
        sup = _supervisor(tmp_path, spec_path, run, plan, "docker", journal, sandbox_image)
        await sup.run()
    finally:
        journal.close()
    left = docker_client.containers.list(all=True, filters={"label": f"mlrb.run={run}"})
    _remove_run(docker_client, run)
    evs = _events(tmp_path / "j.db", run)
    results = [e.data["output"] for e in evs if e.kind == "tool.result"]
    assert BODY in results[1] and "403" in results[2], results
    net = [e.data for e in evs if e.kind == "net.request"]
    assert [(n["method"], n["host"], n["allowed"]) for n in net] == [
        ("GET", "allowed.test", True), ("CONNECT", "other.test", False)]
    assert net[0]["received_bytes"] > len(BODY) and net[1]["status"] == 403
    # the proxy, the sandbox and the run's network are gone with the run
    assert left == []
    assert docker_client.networks.list(names=[network_name(run)]) == []


async def test_the_local_sandbox_refuses_an_allowlist_task(tmp_path: Path) -> None:
    spec_path = _spec_file(tmp_path, "tiny_net", 'network = "allowlist"\nallow_hosts = ["allowed.test"]')
    journal = Journal(tmp_path / "j.db")
    try:
        sup = _supervisor(tmp_path, spec_path, "net-local", [], "local", journal, "unused")
        status = await sup.run()
    finally:
        journal.close()
    assert status == "failed"
    assert "allowlist" in sup.end_reason and "docker sandbox" in sup.end_reason, sup.end_reason
    kinds = [e.kind for e in _events(tmp_path / "j.db", "net-local")]
    assert "sandbox.started" not in kinds and "net.request" not in kinds


async def test_the_run_view_shows_requests_live(tmp_path: Path) -> None:
    from mlrb_tui.screens.run_view import RunScreen
    from mlrb_tui.widgets.timeline import ActionLog
    from runner.events import EventFactory
    from tests.fixtures.console_app import SIZE, Catcher, Feed, make_app, started
    from tests.fixtures.console_app import until as pilot_until
    from tests.fixtures.demo_journal import NOW, RUNNING

    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("enter")
        await pilot_until(pilot, lambda: isinstance(app.screen, RunScreen)
                          and app.screen.state is not None
                          and app.screen.query_one(ActionLog).option_count > 0)
        log = app.screen.query_one(ActionLog)
        f = EventFactory(RUNNING, next_seq=app.fleet.last_seq(RUNNING) + 1)
        feed.push(f.make("net.request", {"method": "CONNECT", "host": "huggingface.co", "port": 443,
                                         "status": 200, "allowed": True, "result": "TCP_TUNNEL",
                                         "sent_bytes": 2048, "received_bytes": 4_300_000}, ts=NOW),
                  f.make("net.request", {"method": "GET", "host": "example.com", "port": 80,
                                         "status": 403, "allowed": False,
                                         "result": "TCP_DENIED"}, ts=NOW + 1))
        await pilot_until(pilot, lambda: sum(e.kind == "net.request" for e in log.entries) == 2)
        shown = "\n".join(log.plain_lines())
        assert "allowed CONNECT huggingface.co:443 200 4.1M in, 2K out" in shown
        assert "REFUSED GET example.com:80 403" in shown
        await pilot.press("home", "E")  # a refusal is one of the errors the jump key finds
        assert log.current is not None and log.current.kind == "net.request"
        assert not log.current.text.startswith("allowed")


@pytest.mark.docker
async def test_an_adopted_run_follows_its_proxy_on_without_repeats(
        tmp_path: Path, docker_client: Any, proxy_image: str, sandbox_image: str,
        upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.adoption import TURNS_DIR, load_resume
    from runner.jobs import JobFiles
    from runner.tools import job_id_for

    monkeypatch.setenv("MLRB_PROXY_NETWORK", upstream.network)
    monkeypatch.setenv("MLRB_PROXY_IMAGE", proxy_image)
    spec_path = _spec_file(tmp_path, "tiny_net", 'network = "allowlist"\nallow_hosts = ["allowed.test"]')
    run = f"net-adopt-{uuid.uuid4().hex[:8]}"
    plan = [
        {"name": "write_file", "args": {"path": "probe.py", "content": PROBE % {"proxy": proxy_name(run)}}},
        {"name": "bash", "args": {"command": "python3 probe.py get allowed.test", "timeout_s": 60}},
        # made while no runner follows the run
        {"name": "bash", "args": {"command": "sleep 2; python3 probe.py connect other.test",
                                  "timeout_s": 60}},
        {"name": "bash", "args": {"command": "python3 probe.py connect allowed.test", "timeout_s": 60}},
    ]
    db = tmp_path / "j.db"
    journal = Journal(db)
    try:
        first = _supervisor(tmp_path, spec_path, run, plan, "docker", journal, sandbox_image)
        running = asyncio.create_task(first.run())
        calls = lambda: [e.data["id"] for e in _events(db, run) if e.kind == "tool.call"]  # noqa: E731
        workspace = tmp_path / run / "workspace"
        await until(lambda: len(calls()) == 3, "the third call", timeout=120)
        job = JobFiles(workspace, job_id_for(calls()[2]))
        await until(job.exists, "its command to start", timeout=60)
        await first.detach("the runner stops")
        assert await running == "detached"
        await until(lambda: job.rc() is not None, "the unfollowed command to end", timeout=60)
        reader = JournalReader(db)
        try:
            resume = load_resume(reader, run, "running", workspace.parent / TURNS_DIR)
        finally:
            reader.close()
        second = _supervisor(tmp_path, spec_path, run, plan, "docker", journal, sandbox_image)
        await second.adopt(resume)
    finally:
        journal.close()
        _remove_run(docker_client, run)  # a failed test leaves nothing behind either
    evs = _events(db, run)
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
    net = [(e.data["method"], e.data["host"], e.data["allowed"]) for e in evs if e.kind == "net.request"]
    assert net == [("GET", "allowed.test", True), ("CONNECT", "other.test", False),
                   ("CONNECT", "allowed.test", True)]
    assert docker_client.containers.list(all=True, filters={"label": f"mlrb.run={run}"}) == []
    assert docker_client.networks.list(names=[network_name(run)]) == []


@pytest.mark.docker
def test_doctor_checks_the_proxy_image_where_a_task_needs_it(
        tmp_path: Path, docker_client: Any, proxy_image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.doctor import diagnose

    monkeypatch.setenv("MLRB_HOME", str(tmp_path / "home"))
    for var in ("MLRB_CONFIG", "MLRB_SANDBOX", "MLRB_TASKS_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLRB_PROXY_IMAGE", proxy_image)
    checks = {c.name: c for c in diagnose("full").checks}
    assert checks[f"image {proxy_image}"].status == "ok"
    assert "llm_efficiency" in checks[f"image {proxy_image}"].detail
    assert f"image {proxy_image}" not in {c.name for c in diagnose("smoke").checks}  # none there
    monkeypatch.setenv("MLRB_PROXY_IMAGE", "mlrb-proxy-missing:none")
    missing = {c.name: c for c in diagnose("full").checks}["image mlrb-proxy-missing:none"]
    assert missing.status == "fail" and missing.fix == "run `mlrb image proxy`"


@pytest.mark.docker
async def test_adopting_a_proxy_that_is_gone_fails_and_cleans_up(
        docker_client: Any, proxy_image: str, upstream: Upstream) -> None:
    import docker.errors

    run = f"net-{uuid.uuid4().hex[:8]}"
    first = EgressProxy(run, ("allowed.test",), image=proxy_image, outside=upstream.network,
                        client=docker_client)
    await first.start()
    later = EgressProxy(run, ("allowed.test",), image=proxy_image, outside=upstream.network,
                        client=docker_client)
    await later.adopt()  # the running proxy is this run's
    docker_client.containers.get(first.name).remove(force=True)
    again = EgressProxy(run, ("allowed.test",), image=proxy_image, outside=upstream.network,
                        client=docker_client)
    with pytest.raises(ProxyError, match="is gone"):
        await again.adopt()
    await again.stop()  # the run's network goes with the failed adoption
    with pytest.raises(docker.errors.NotFound):
        docker_client.networks.get(first.network)
