"""A campaign across a fleet on a real Mosquitto (authentication and the ACL on): the driving
runner queues its slots' runs as jobs, any runner with room takes them, and at most
`max_concurrent` are live across the fleet at once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from runner.campaign import build_spec, campaign_status, request
from runner.config import BusTable, Config
from runner.engine import Engine
from runner.journal import JournalReader
from tests.conftest import Mosquitto, until

FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"

pytestmark = pytest.mark.mosquitto


@pytest.fixture(autouse=True)
def tiny_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    monkeypatch.setenv("TINY_STEPS", "20")
    monkeypatch.setenv("TINY_DELAY", "0.05")


def engine_on(mosquitto: Mosquitto, home: Path, name: str, slots: int) -> Engine:
    cred = mosquitto.accounts[name]
    cfg = Config(home=home / name, bus_url=mosquitto.url, backend="local", max_runs=slots,
                 bus=BusTable(username=cred.username, password=cred.password))
    return Engine(cfg, runner_id=name)


class LiveSampler:
    """The campaign's live runs across the engines, sampled on every event they publish
    (each run's creation and end among them)."""

    def __init__(self, engines: Sequence[Engine], campaign: str) -> None:
        self.engines: list[Engine] = []
        self.campaign = campaign
        self.most = 0
        self.samples = 0
        for e in engines:
            self.add(e)

    def add(self, engine: Engine) -> None:
        self.engines.append(engine)
        publish = engine._publish

        def sampled(events: Any) -> None:
            self.sample()
            publish(events)
        engine._publish = sampled  # type: ignore[method-assign]

    def live(self) -> list[str]:
        return [r for e in self.engines for r, s in e.supervisors.items()
                if s.req.campaign == self.campaign and not s.ended]

    def sample(self) -> None:
        self.samples += 1
        self.most = max(self.most, len(self.live()))


async def ask(engine: Engine, name: str, **fields: Any) -> str:
    spec = build_spec(fields)
    return await engine.campaigns.handle(request("run", name, spec=spec.model_dump(mode="json")))


async def settled(engine: Engine, name: str, timeout: float = 240) -> dict[str, Any]:
    reader = engine.reader
    assert reader is not None
    return await until(lambda: (row := reader.get_campaign(name)) and row["state"] != "active" and row,
                       f"campaign {name} to settle", timeout=timeout, interval=0.2)


def campaign_runs(engines: Sequence[Engine], name: str) -> list[dict[str, Any]]:
    return [r for e in engines for r in JournalReader(e.cfg.db_path).campaign_runs(name)]


async def test_a_campaign_spreads_over_the_fleet_with_at_most_k_live_at_once(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    a, b = engine_on(mosquitto, tmp_path, "host-a", 1), engine_on(mosquitto, tmp_path, "host-b", 2)
    for e in (a, b):
        await e.start()
    sampler = LiveSampler((a, b), "fleet")
    try:
        await until(lambda: a.job_taker.connected and b.job_taker.connected, "both runners on the queue")
        # host-a drives: 4 slots of the tiny task, 2 live at most across the fleet
        assert await ask(a, "fleet", tasks="tiny_train", repeats=4, max_concurrent=2) == "accepted"
        row = await settled(a, "fleet")
        assert row["state"] == "done" and row["reason"] is None
        runs = campaign_runs((a, b), "fleet")
        assert sorted(r["slot"] for r in runs) == [f"tiny_train/scripted/{i}" for i in range(1, 5)]
        assert {r["status"] for r in runs} == {"succeeded"}
        assert {r["runner"] for r in runs} == {"host-a", "host-b"}  # both runners took some
        assert sampler.samples > 0 and sampler.most == 2, (sampler.most, sampler.samples)
        # the driver's journal says where each slot's run went, so its status counts them all
        reader = a.reader
        assert reader is not None
        jobs = reader.campaign_jobs("fleet")
        assert len(jobs) == 4 and {j["status"] for j in jobs} == {"ended"}
        assert {j["run_status"] for j in jobs} == {"succeeded"}
        assert sorted(j["run"] for j in jobs) == sorted(r["run"] for r in runs)
        assert {j["runner"] for j in jobs} == {"host-a", "host-b"}
        status = campaign_status(reader.get_campaign("fleet") or {}, reader.campaign_runs("fleet"), jobs)
        assert (status["total"]["done"], status["total"]["runs"], status["total"]["running"]) == (4, 4, 0)
        assert {n for s in status["slots"] for n in s["runners"]} == {"host-a", "host-b"}
        # the same campaign again: every slot is done, so nothing starts anywhere
        assert await ask(a, "fleet", tasks="tiny_train", repeats=4, max_concurrent=2) == "accepted"
        assert (await settled(a, "fleet"))["state"] == "done"
        assert len(a.supervisors) + len(b.supervisors) == 4
        assert len(reader.campaign_jobs("fleet")) == 4
    finally:
        for e in (a, b):
            await e.stop()
    assert len(campaign_runs((a, b), "fleet")) == 4


async def test_a_driver_restarted_mid_campaign_resumes_from_its_journal_and_the_job_states(
        mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINY_STEPS", "60")  # a few seconds each: the driver stops while one runs
    a, b = engine_on(mosquitto, tmp_path, "host-a", 1), engine_on(mosquitto, tmp_path, "host-b", 2)
    for e in (a, b):
        await e.start()
    sampler = LiveSampler((a, b), "resumed")
    again: Engine | None = None
    stopped = False
    try:
        await until(lambda: a.job_taker.connected and b.job_taker.connected, "both runners on the queue")
        assert await ask(a, "resumed", tasks="tiny_train", repeats=3, max_concurrent=2) == "accepted"
        await until(lambda: [r for r in sampler.live() if r in b.supervisors], "a run of it on host-b",
                    timeout=60)
        # the driver's daemon stops (its own live run ends with it, at no retry's cost) while
        # host-b's run goes on and ends with nobody driving
        await a.stop("the runner daemon was stopped")
        stopped = True
        await until(lambda: not [r for r in sampler.live() if r in b.supervisors], "host-b's runs to end",
                    timeout=120)
        again = engine_on(mosquitto, tmp_path, "host-a", 1)
        sampler.add(again)
        await again.start()
        row = await settled(again, "resumed")
        assert row["state"] == "done" and row["reason"] is None
        runs = campaign_runs((again, b), "resumed")
        done = sorted(r["slot"] for r in runs if r["status"] == "succeeded")
        assert done == [f"tiny_train/scripted/{i}" for i in range(1, 4)]  # each slot filled once
        assert {r["status"] for r in runs} <= {"succeeded", "killed"}
        assert all(r["reason"] == "the runner daemon was stopped" for r in runs if r["status"] == "killed")
        assert sampler.most <= 2, sampler.most
        reader = again.reader
        assert reader is not None
        jobs = reader.campaign_jobs("resumed")
        assert sorted(j["run"] for j in jobs) == sorted(r["run"] for r in runs)
        assert {j["status"] for j in jobs} == {"ended"}
        status = campaign_status(reader.get_campaign("resumed") or {}, reader.campaign_runs("resumed"), jobs)
        assert (status["total"]["done"], status["total"]["runs"]) == (3, len(runs))
    finally:
        for e in (None if stopped else a, again, b):
            if e is not None:
                await e.stop()


async def test_cancel_withdraws_the_jobs_no_runner_started_and_kills_the_live_run(
        mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINY_STEPS", "100000")  # the runs last: they end when killed
    a = engine_on(mosquitto, tmp_path, "host-a", 1)
    await a.start()
    reader = a.reader
    assert reader is not None
    try:
        await until(lambda: a.job_taker.connected, "host-a on the queue")
        assert await ask(a, "stop", tasks="tiny_train", repeats=3, max_concurrent=2) == "accepted"
        # one slot runs; the other job bounces on the queue, host-a being full
        await until(lambda: [j for j in reader.campaign_jobs("stop") if j["status"] == "requeued"],
                    "the second job put back for want of room", timeout=60)
        live = a.campaigns.live_runs("stop")
        assert len(live) == 1
        answer = await a.campaigns.handle(request("cancel", "stop", reason="budget spent", operator="ana@ops"))
        assert answer == "accepted"
        await until(lambda: a.supervisors[live[0]].ended, "the live run killed", timeout=60)
        # once host-a has room, it is handed the withdrawn job again, and drops it
        await until(lambda: a.rejects.counts["duplicate_job"] >= 1, "the withdrawn job dropped", timeout=60)
        jobs = await until(lambda: (js := reader.campaign_jobs("stop")) and all(
            j["status"] == "ended" for j in js) and js, "both jobs ended", timeout=30)
        assert len(jobs) == 2 and {j["agent"] for j in jobs} == {"scripted"}
        assert sorted((j["run_status"], j["reason"]) for j in jobs) == [("killed", "budget spent")] * 2
        assert [r["status"] for r in reader.campaign_runs("stop")] == ["killed"]
        assert reader.campaign_runs("stop")[0]["reason"] == "budget spent"
        assert len(a.supervisors) == 1
    finally:
        await a.stop()


async def test_a_cancel_sent_from_the_driving_host_reaches_its_runner_and_kills_runs_elsewhere(
        mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import os
    import time

    from click.testing import CliRunner

    from mlrb_tui.cli import cli
    from runner.config import DaemonInfo, write_daemon_info

    monkeypatch.setenv("TINY_STEPS", "100000")  # the runs last: they end when killed
    a, b = engine_on(mosquitto, tmp_path, "host-a", 1), engine_on(mosquitto, tmp_path, "host-b", 1)
    await a.start()
    await b.start()
    try:
        await until(lambda: a.job_taker.connected and b.job_taker.connected, "both runners on the queue")
        assert await ask(a, "stop", tasks="tiny_train", repeats=2, max_concurrent=2) == "accepted"
        sampler = LiveSampler([a, b], "stop")
        live = await until(lambda: len(ls := sampler.live()) == 2 and ls, "a run on each runner", timeout=90)
        there = next(r for r in live if r in b.supervisors)
        # the operator's CLI on host-a, whose daemon drives the campaign
        write_daemon_info(a.cfg, DaemonInfo(pid=os.getpid(), bus_url=mosquitto.url, prefix=a.cfg.prefix,
                                            runner_id="host-a", db=str(a.cfg.db_path), broker="external",
                                            started=time.time()))
        operator = mosquitto.config()
        monkeypatch.setenv("MLRB_HOME", str(a.cfg.home))
        monkeypatch.setenv("MLRB_BUS_USERNAME", str(operator.username))
        monkeypatch.setenv("MLRB_BUS_PASSWORD", str(operator.password))
        outputs = []
        for _ in range(3):  # the request reaches host-a whichever runner the queue hands it to
            done = await asyncio.to_thread(CliRunner().invoke, cli, [
                "campaign", "cancel", "stop", "--reason", "budget spent", "--timeout", "60"])
            assert done.exit_code == 0, done.output
            assert "campaign stop cancelled: budget spent" in done.output
            outputs.append(done.output)
        # host-a killed its own run; the CLI killed the one host-b started, once
        assert f"killed {there} on runner host-b" in outputs[0], outputs
        assert not any("killed" in out for out in outputs[1:]), outputs
        await until(lambda: all(s.ended for s in (*a.supervisors.values(), *b.supervisors.values())),
                    "every run of the campaign killed", timeout=60)
        ended = [r for e in (a, b) for r in JournalReader(e.cfg.db_path).campaign_runs("stop")]
        assert sorted((r["status"], r["reason"]) for r in ended) == [("killed", "budget spent")] * 2
    finally:
        await a.stop()
        await b.stop()
