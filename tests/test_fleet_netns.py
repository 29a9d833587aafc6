"""A fleet over a real network: five hosts in network namespaces the test makes.

    broker    10.213.7.1  Mosquitto as `mlrb broker config` writes it: TLS, passwords, the ACL
    runner-a  10.213.7.2  the runner daemon (what `mlrb up` starts), 1 slot, local sandbox
    runner-b  10.213.7.3  the same with another runner account, 2 slots
    recorder  10.213.7.4  `mlrb record` as a viewer
    console   10.213.7.5  the CLI and the console (headless) as an operator and a viewer

Every client reaches the broker over `mqtts://10.213.7.1:8883` and verifies its certificate
against the test's own CA. The checks are what the broker and the subscribers must refuse
when the hosts are really apart: anonymous and wrong-password clients, a viewer's kill, an
operator's event, a control under another's name, and a runner forging another's run; and
what the jobs queue must do: spread jobs by free slots, and give a job held by a runner that
dies before starting it to the other runner.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pytest
from click.testing import CliRunner

from mlrb_tui.app import MLRBApp
from mlrb_tui.cli import cli
from mlrb_tui.screens.confirm_kill import KillConfirm
from runner.bus import (
    BusConfig,
    BusRefused,
    Topics,
    open_client,
    read_runner_states,
    send_control,
    submit_job,
)
from runner.control import ControlCommand
from runner.embedded_broker import find_mosquitto
from runner.events import EventFactory, encode_batch
from runner.job_queue import JobState, latest_by_job, read_job_states
from runner.journal import JournalReader
from tests.conftest import raw_client, require, until
from tests.netns import SUBNET, Host, NetnsUnavailable, Network, namespaces_named, tcp_open
from tests.pki import TestCA

pytestmark = pytest.mark.mosquitto

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tests" / "fixtures" / "tasks"
PORT = 8883
HOSTS = ("broker", "runner-a", "runner-b", "recorder", "console")
ACCOUNTS = {"alice": "operator", "bob": "viewer", "rec": "viewer",
            "runner-a": "runner", "runner-b": "runner"}
SLOTS = {"runner-a": 1, "runner-b": 2}
SIZE = (150, 40)


def _toml(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Fleet:
    net: Network
    dir: Path
    passwords: dict[str, str]
    homes: dict[str, Path] = field(default_factory=dict)  # one MLRB_HOME per account
    recorder: subprocess.Popen[bytes] | None = None
    runners: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)  # reaped at the end

    @property
    def broker(self) -> Host:
        return self.net["broker"]

    @property
    def url(self) -> str:
        return f"mqtts://{self.broker.addr}:{PORT}"

    @property
    def ca(self) -> Path:
        return self.dir / "broker" / "ca.crt"

    @property
    def broker_log(self) -> Path:
        return self.dir / "broker.log"

    @property
    def recorder_log(self) -> Path:
        return self.dir / "recorder.log"

    @property
    def central(self) -> Path:
        return self.dir / "recorder" / "fleet.db"

    def bus(self, account: str) -> BusConfig:
        return BusConfig(self.url, username=account, password=self.passwords[account],
                         ca_file=str(self.ca))

    def home(self, account: str, *, max_runs: int | None = None) -> Path:
        """An MLRB_HOME whose config reaches the broker as `account`."""
        home = self.dir / "homes" / account
        home.mkdir(parents=True, exist_ok=True)
        lines = ["[bus]", f"url = {_toml(self.url)}", f"username = {_toml(account)}",
                 f"password = {_toml(self.passwords[account])}", f"ca_file = {_toml(self.ca)}",
                 "[sandbox]", 'backend = "local"',
                 "[runner]", f"max_runs = {max_runs or 1}", "min_free_gb = 0",
                 'workspace_quota = "watch"']
        (home / "config.toml").write_text("\n".join(lines) + "\n")
        self.homes[account] = home
        return home

    def env(self, account: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLRB_")}
        env.update(MLRB_HOME=str(self.homes[account]), MLRB_TASKS_PATH=str(TASKS),
                   PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
                   **extra)
        return env

    def mlrb(self, host: str, account: str, *args: str,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`mlrb ARGS` on `host`, configured as `account`."""
        return self.net[host].call([sys.executable, "-m", "mlrb_tui.cli", *args],
                                   env=self.env(account), timeout=timeout)

    def journal(self, runner: str) -> Path:
        return self.homes[runner] / "mlrb.db"

    def on(self, host: str, coro: Callable[[], Coroutine[Any, Any, T]], timeout: float = 150) -> T:
        """Run `coro()` on `host`'s network; its exception is the test's."""
        return self.net[host].run(coro).result(timeout=timeout)

    def print_logs(self, tail: int = 4000) -> None:
        for log in (self.broker_log, self.recorder_log, *(self.dir / f"{r}.log" for r in SLOTS)):
            if log.exists():
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-tail:]}")

    def stop_recorder(self) -> str:
        """End `mlrb record` as ctrl+c would; what it printed."""
        assert self.recorder is not None
        self.recorder.send_signal(signal.SIGINT)
        self.recorder.wait(timeout=30)
        return self.recorder_log.read_text(errors="replace")


def _make_broker(fleet: Fleet) -> None:
    d = fleet.dir / "broker"
    d.mkdir()
    ca = TestCA(d)
    ca.server([fleet.broker.addr, "broker.fleet"])
    assert ca.path == fleet.ca
    cli_runner = CliRunner(env={"MLRB_HOME": str(fleet.dir / "homes" / "admin")})
    out = cli_runner.invoke(cli, ["broker", "config", "--dir", str(d), "--port", str(PORT),
                                  "--bind", fleet.broker.addr])
    assert out.exit_code == 0, out.output
    for name, role in ACCOUNTS.items():
        added = cli_runner.invoke(cli, ["broker", "user", "add", name, "--role", role,
                                        "--password-stdin", "--dir", str(d)],
                                  input=fleet.passwords[name] + "\n")
        assert added.exit_code == 0, added.output
    exe = find_mosquitto()
    assert exe is not None
    with open(fleet.broker_log, "wb") as log:
        fleet.servers.append(fleet.broker.popen([exe, "-c", str(d / "mosquitto.conf")],
                                                stdout=log, stderr=log))

    async def listening() -> None:
        await until(lambda: tcp_open(fleet.broker.addr, PORT), "the broker's TLS listener",
                    timeout=20, interval=0.05)
    fleet.on("console", listening)


def _start_recorder(fleet: Fleet) -> None:
    fleet.home("rec")
    fleet.central.parent.mkdir(parents=True)
    with open(fleet.recorder_log, "wb") as out:  # a file, not a pipe: it never fills up
        fleet.recorder = fleet.net["recorder"].popen(
            [sys.executable, "-m", "mlrb_tui.cli", "record", "--db", str(fleet.central),
             "--client-id", f"mlrb-rec-{fleet.net.tag}"],
            env=fleet.env("rec"), stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    log = fleet.broker_log

    async def connected() -> None:
        # the broker's own word that the recorder got in, with its account, from its host
        pattern = re.compile(rf"New client connected from {re.escape(fleet.net['recorder'].addr)}"
                             rf":\d+ as mlrb-rec-{fleet.net.tag} .*u'rec'")
        await until(lambda: pattern.search(log.read_text(errors="replace")),
                    "the recorder's connection in the broker's log", timeout=60, interval=0.05)
    fleet.on("console", connected)


def _start_runners(fleet: Fleet, env: dict[str, str],
                   only: dict[str, dict[str, str]] | None = None) -> None:
    """The runner daemon on each runner host (what `mlrb up` detaches), held as a child;
    `env` for both, `only[runner]` for one."""
    for runner, slots in SLOTS.items():
        home = fleet.home(runner, max_runs=slots)
        with open(fleet.dir / f"{runner}.log", "wb") as log:
            fleet.runners[runner] = fleet.net[runner].popen(
                [sys.executable, "-m", "runner.daemon", "--home", str(home)],
                env=fleet.env(runner, **env, **(only or {}).get(runner, {})),
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    alice = fleet.bus("alice")

    async def online() -> None:
        async def all_up() -> bool:
            states = await read_runner_states(alice)
            return all(isinstance(s, dict) and s.get("state") == "online"
                       and s.get("pid") == fleet.runners[r].pid
                       for r, s in ((r, states.get(r)) for r in SLOTS))
        await until(all_up, "both runners online on the broker", timeout=90, interval=0.2)
    fleet.on("console", online)


def network(names: Sequence[str]) -> Network:
    """The hosts made, or the test skipped (failed under CI) saying why they cannot be."""
    net = Network(names)
    try:
        net.create()
    except NetnsUnavailable as exc:
        net.close()
        require(False, f"network namespaces ({exc})")
    return net


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    require(find_mosquitto() is not None, "mosquitto")
    net = network(HOSTS)
    f = Fleet(net, tmp_path, {name: secrets.token_urlsafe(18) for name in ACCOUNTS})
    try:
        f.home("alice")
        f.home("bob")
        (tmp_path / "console").mkdir()
        _make_broker(f)
        _start_recorder(f)
        yield f
    finally:
        net.close()
        for proc in (*f.servers, *f.runners.values(), *([f.recorder] if f.recorder else [])):
            proc.wait(timeout=30)  # each ended with its host; reaped here
        f.print_logs()  # pytest shows them when the test failed
        assert namespaces_named(net.tag) == []


def test_the_hosts_reach_each_other_only_and_are_gone_after_a_failure() -> None:
    net = network(["a", "b"])
    a, b = net["a"], net["b"]
    with pytest.raises(RuntimeError, match="the body failed"):
        with net:
            sleeper = a.popen(["sleep", "600"])
            # each host knows its own subnet and nothing else: no route leaves the switch
            routes = a.call(["ip", "-4", "route"]).stdout.split("\n")
            assert [r.split()[0] for r in routes if r] == [f"{SUBNET}.0/24"]

            async def serve() -> bool:
                server = await asyncio.start_server(lambda r, w: w.close(), a.addr, 7000)
                try:
                    return await b.within(reach)
                finally:
                    server.close()

            async def reach() -> bool:
                return await asyncio.to_thread(tcp_open, a.addr, 7000)
            assert a.run(serve).result(timeout=30)
            raise RuntimeError("the body failed")
    assert namespaces_named(net.tag) == []
    assert sleeper.wait(timeout=30) == -signal.SIGTERM


# -- helpers the scenarios share -----------------------------------------------------------
def central_runs(fleet: Fleet) -> list[dict[str, Any]]:
    if not fleet.central.exists():
        return []
    reader = JournalReader(fleet.central)
    try:
        return reader.list_runs()
    finally:
        reader.close()


def wires(db: Path, run: str) -> list[bytes]:
    reader = JournalReader(db)
    try:
        return [e.wire for e in reader.events(run, 0, 100_000)]
    finally:
        reader.close()


def interventions(db: Path, run: str) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT action, operator, reason FROM interventions WHERE run = ? "
                            "ORDER BY seq", (run,)).fetchall()


def console_app(fleet: Fleet) -> MLRBApp:
    """The console on the console host, as the operator alice, with a journal of its own."""
    return MLRBApp(fleet.dir / "console" / "mlrb.db", fleet.bus("alice"), repaint_hz=4)


def rejected(summary: str, reason: str) -> int:
    """How many payloads `mlrb record`'s closing line says it rejected for `reason`."""
    m = re.search(rf"\b{reason} (\d+)", summary)
    return int(m.group(1)) if m else 0


# -- refusals and forgery ------------------------------------------------------------------
def test_the_broker_and_the_recorder_refuse_what_each_role_may_not_do(fleet: Fleet) -> None:
    _start_runners(fleet, {"TINY_COUNT_DELAY": "600"})  # the run stays live until it is killed
    t = Topics("mlrb/v1")
    alice = fleet.bus("alice")
    found: dict[str, str] = {}

    async def console() -> None:
        # nobody gets in without an account, nor with a wrong password
        for stranger in (alice.as_user(None, None), alice.as_user("alice", "not-her-password")):
            with pytest.raises(aiomqtt.MqttError, match="Not authorized"):
                async with raw_client(stranger):
                    pass
        app = console_app(fleet)
        async with app.run_test(size=SIZE) as pilot:
            await until(lambda: app.source.bus_state == "online", "the console online",
                        pause=pilot.pause)
            submitted = await asyncio.to_thread(fleet.mlrb, "console", "alice", "submit",
                                                "tiny_count", "--timeout", "60")
            assert submitted.returncode == 0, submitted.stdout + submitted.stderr
            rows = app.fleet.rows
            run = await until(lambda: next((r for r, row in rows.items()
                                            if row["status"] == "running"), ""),
                              "the run running in the console", timeout=60, pause=pilot.pause)
            owner = str(rows[run]["runner"])
            other = next(r for r in SLOTS if r != owner)
            found.update(run=run, owner=owner, other=other)

            # a viewer's kill, from the CLI on the console host: the broker refuses it
            viewer_kill = await asyncio.to_thread(fleet.mlrb, "console", "bob", "kill", run,
                                                  "--reason", "a viewer tries")
            assert viewer_kill.returncode != 0
            assert "Not authorized" in viewer_kill.stdout + viewer_kill.stderr
            async with open_client(alice) as c:
                # an operator's control under another user's name
                cmd = ControlCommand(run=run, action="kill", operator="bob", reason="in bob's name")
                with pytest.raises(BusRefused, match="Not authorized"):
                    await c.publish_checked(t.control(run, "bob"), cmd.to_json())
                # an operator's event, under a runner's id or its own
                forged = encode_batch([EventFactory(run, next_seq=2).make(
                    "sandbox.output", {"stream": "stdout", "text": "alice was here"})])
                for who in (owner, "alice"):
                    with pytest.raises(BusRefused, match="Not authorized"):
                        await c.publish_checked(t.event(who, run), forged)

            # the other runner, from its own host and with its own account, forges the run
            async def forge() -> None:
                twin = EventFactory(run, next_seq=2)
                batch = encode_batch([twin.make("sandbox.output",
                                                {"stream": "stdout", "text": f"forged {i}"})
                                      for i in range(30)])  # seqs held already, and ahead
                async with open_client(fleet.bus(other)) as c:
                    with pytest.raises(BusRefused, match="Not authorized"):
                        await c.publish_checked(t.event(owner, run), batch)
                    await c.publish_checked(t.event(other, run), batch)
            await fleet.net[other].within(forge)
            await until(lambda: app.source.rejects.counts.get("not_owner") == 1,
                        "the console to refuse the forgery", pause=pilot.pause)
            assert rows[run]["status"] == "running"  # nothing refused reached the run

            # the operator kills it from the console: the broker lets alice's control through
            table = app.dashboard.table  # type: ignore[union-attr]
            table.move_cursor(row=table.row_index(run))
            await pilot.press("ctrl+k")
            await until(lambda: isinstance(app.screen, KillConfirm), "the kill confirmation",
                        pause=pilot.pause)
            app.screen.query_one("#reason").value = "done watching"  # type: ignore[attr-defined]
            await pilot.click("#kill")
            await until(lambda: rows[run]["status"] == "killed", "the run killed",
                        timeout=60, pause=pilot.pause)
        # the recorder's copy is the owner's journal, event for event, and holds no forgery
        await until(lambda: wires(fleet.central, run) == wires(fleet.journal(owner), run)
                    and any(r["status"] == "killed" for r in central_runs(fleet)),
                    "the recorder's copy to equal the owner's journal", timeout=60)

    fleet.on("console", console)
    run, owner = found["run"], found["owner"]
    central = wires(fleet.central, run)
    assert central and not any(b"forged" in w or b"alice was here" in w for w in central)
    assert [r["runner"] for r in central_runs(fleet)] == [owner]
    # the audit names the broker's account; the refused viewer left no trace
    assert interventions(fleet.journal(owner), run) == [("kill", "alice", "done watching")]
    assert interventions(fleet.central, run) == [("kill", "alice", "done watching")]
    summary = fleet.stop_recorder()
    assert rejected(summary, "not_owner") == 1, summary


# -- jobs pulled by capacity ---------------------------------------------------------------
def new_job(task: str) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "task": task, "scale": "smoke", "agent": "scripted"}


def test_jobs_go_where_there_is_room_and_a_dead_runners_job_runs_on_the_other(fleet: Fleet) -> None:
    gate = fleet.dir / "gate"  # never opened: runner-a holds whatever tiny_gate job it takes
    _start_runners(fleet, {"TINY_COUNT_DELAY": "600"}, {"runner-a": {"TINY_GATE": str(gate)}})
    alice = fleet.bus("alice")
    jobs = [new_job("tiny_count") for _ in range(3)]
    held = new_job("tiny_gate")

    async def console() -> None:
        app = console_app(fleet)
        async with app.run_test(size=SIZE) as pilot:
            await until(lambda: app.source.bus_state == "online", "the console online",
                        pause=pilot.pause)
            rows = app.fleet.rows

            def running() -> dict[str, list[str]]:
                live: dict[str, list[str]] = {r: [] for r in SLOTS}
                for run, row in rows.items():
                    if row["status"] == "running":
                        live[str(row["runner"])].append(run)
                return live

            async def started(jobs: list[dict[str, Any]]) -> dict[str, JobState] | None:
                """The runners' word on each job, once each says it started."""
                states = latest_by_job(await read_job_states(alice))
                done = all(j["id"] in states and states[j["id"]].status in ("started", "ended") for j in jobs)
                return states if done else None

            def kill(run: str, why: str) -> Awaitable[None]:
                return send_control(alice, ControlCommand(run=run, action="kill", operator="alice",
                                                          reason=why))

            # three jobs at once: runner-a (1 slot) runs one, runner-b (2 slots) two, and none
            # waits behind a full runner while another has room
            await asyncio.gather(*(submit_job(alice, j) for j in jobs))
            await until(lambda: sum(map(len, running().values())) == 3, "three runs running",
                        timeout=60, pause=pilot.pause)
            first = running()
            assert {r: len(runs) for r, runs in first.items()} == SLOTS
            states = await until(lambda: started(jobs), "each job's state to say started")
            assert {states[j["id"]].run: states[j["id"]].runner for j in jobs} == {
                run: r for r, runs in first.items() for run in runs}

            # room on runner-a only; the next job lands there and waits at the gate, unstarted
            (a_run,), (b_run, _) = first["runner-a"], first["runner-b"]
            await kill(a_run, "make room")
            await until(lambda: rows[a_run]["status"] == "killed", "runner-a's run killed",
                        timeout=30, pause=pilot.pause)
            await submit_job(alice, held)
            waiting = Path(f"{gate}.waiting")
            await until(waiting.exists, "runner-a to take the job", timeout=60, pause=pilot.pause)
            assert int(waiting.read_text()) == fleet.runners["runner-a"].pid
            # runner-b gets room, then runner-a dies holding the job it never started
            await kill(b_run, "make room")
            await until(lambda: rows[b_run]["status"] == "killed", "runner-b's run killed",
                        timeout=30, pause=pilot.pause)
            dead = fleet.runners["runner-a"]
            dead.kill()
            await asyncio.to_thread(dead.wait, 30)
            run = await until(lambda: next((r for r, row in rows.items() if row["task"] == "tiny_gate"
                                            and row["status"] == "running"), ""),
                              "the held job running elsewhere", timeout=60, pause=pilot.pause)
            assert rows[run]["runner"] == "runner-b"
            state = (await until(lambda: started([held]), "the held job's state"))[held["id"]]
            assert (state.status, state.runner, state.run) == ("started", "runner-b", run)
            assert len(running()["runner-b"]) == 2

    fleet.on("console", console)
    # `mlrb queue` on the console host, as a viewer: where each job went, and who submitted it
    # (the account the broker authenticated)
    queue = fleet.mlrb("console", "bob", "queue", "--json")
    assert queue.returncode == 0, queue.stdout + queue.stderr
    # a job whose run has ended since it started reads ended: it started there all the same
    went = {j["job"]: ("started" if j["status"] == "ended" else j["status"], j["runner"], j["submitter"])
            for j in json.loads(queue.stdout)}
    assert went[held["id"]] == ("started", "runner-b", "alice")
    assert sorted(went[j["id"]] for j in jobs) == [
        ("started", "runner-a", "alice"), *[("started", "runner-b", "alice")] * 2]
    # the runner that died never journaled a run for the job it held
    reader = JournalReader(fleet.journal("runner-a"))
    try:
        assert [r["task"] for r in reader.list_runs()] == ["tiny_count"]
    finally:
        reader.close()
