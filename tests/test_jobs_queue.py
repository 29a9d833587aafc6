"""The jobs queue on a real Mosquitto (authentication and the ACL on): runners take jobs by
capacity, a job held by a runner that dies runs elsewhere, jobs wait for a runner to come, and
refused jobs are recorded as jobs, never as runs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from runner.bus import Topics, submit_job
from runner.config import BusTable, Config
from runner.engine import Engine, Job
from runner.job_queue import JobTaker, RefusalLog, latest_by_job, read_job_states
from runner.journal import JournalReader
from tests.conftest import Mosquitto, raw_client, until

FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.mosquitto


@pytest.fixture(autouse=True)
def tiny_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))


def engine_on(mosquitto: Mosquitto, home: Path, name: str, slots: int) -> Engine:
    cred = mosquitto.accounts[name]
    cfg = Config(home=home / name, bus_url=mosquitto.url, backend="local", max_runs=slots,
                 bus=BusTable(username=cred.username, password=cred.password))
    return Engine(cfg, runner_id=name)


async def taking(*engines: Engine) -> None:
    await until(lambda: all(e.job_taker.connected for e in engines),
                "every runner's subscriptions to the jobs queue")


def live(engine: Engine) -> list[str]:
    return [r for r, s in engine.supervisors.items() if not s.ended]


def job(i: int | str, **more: object) -> dict[str, object]:
    return {"id": f"job-{i}", "task": "tiny_train", "agent": "scripted", **more}


async def test_runners_with_one_and_two_slots_take_three_jobs_at_once(
        mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINY_STEPS", "100000")  # the runs last: they end when killed
    monkeypatch.setenv("TINY_DELAY", "0.05")
    a, b = engine_on(mosquitto, tmp_path, "host-a", 1), engine_on(mosquitto, tmp_path, "host-b", 2)
    for e in (a, b):
        await e.start()
    try:
        await taking(a, b)
        await asyncio.gather(*(submit_job(mosquitto.config(), job(i)) for i in range(3)))
        # all three start together: none waits behind the full runner while the other has room
        await until(lambda: len(live(a)) == 1 and len(live(b)) == 2, "A with 1 run, B with 2", timeout=30)
        assert all(not e.supervisors[r].ended for e in (a, b) for r in live(e))
        jobs = {e.supervisors[r].req.job for e in (a, b) for r in live(e)}
        assert jobs == {"job-0", "job-1", "job-2"}
        # a fourth job while both are full waits on the queue, and starts once a slot frees
        await submit_job(mosquitto.config(), job(3))
        states = await until(lambda: _requeued(mosquitto, "job-3"), "job-3 put back for want of room",
                             timeout=20)
        assert {s.runner for s in states} <= {"host-a", "host-b"}
        assert len(live(a)) == 1 and len(live(b)) == 2
        await b.supervisors[live(b)[0]].kill("make room")
        await until(lambda: any(s.req.job == "job-3" for e in (a, b) for s in e.supervisors.values()),
                    "job-3 started once a slot freed", timeout=30)
    finally:
        for e in (a, b):
            await e.stop()
    # a started job whose run has ended says so (the one killed to make room)
    rows = {r["id"]: r for e in (a, b) for r in JournalReader(e.cfg.db_path).jobs()
            if r["status"] in ("started", "ended")}
    assert sorted(rows) == ["job-0", "job-1", "job-2", "job-3"]
    assert all(r["submitter"] == "tester" and r["run"] for r in rows.values())


async def _requeued(mosquitto: Mosquitto, job_id: str) -> list:
    states = await read_job_states(mosquitto.config(), job_id, timeout=0.3)
    return [s for s in states if s.status == "requeued"]


HOLDER = """
import asyncio, sys
from runner.bus import BusConfig, RunnerEndpoint
from runner.events import RejectCounter
from runner.job_queue import JobTaker
async def main():
    config = BusConfig(sys.argv[1], username="host-a", password=sys.argv[2])
    state = RunnerEndpoint(config, "host-a", lambda run, after, limit: [])
    await state.start()
    while not state.connected:
        await asyncio.sleep(0.01)
    await state.set_state({"state": "online", "runs": []})
    async def hold(offer):  # a runner stuck before it starts the run (e.g. waiting for a GPU)
        print("holding", offer.id, flush=True)
        await asyncio.Event().wait()
    taker = JobTaker(config, "host-a", hold, RejectCounter())
    await taker.start()
    while not taker.connected:
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def test_a_job_held_by_a_runner_killed_before_it_started_runs_on_another(
        mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINY_STEPS", "2")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, mosquitto.url, mosquitto.accounts["host-a"].password,
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    b = engine_on(mosquitto, tmp_path, "host-b", 2)
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
        # host-a is the only runner: the job goes to it, and it holds the job unstarted
        await submit_job(mosquitto.config(), job("held"))
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"holding job-held"
        # a second job queues behind it in host-a's session, also unstarted
        await submit_job(mosquitto.config(), job("behind"))
        await b.start()
        await taking(b)
        os.kill(proc.pid, signal.SIGKILL)  # no DISCONNECT: the broker sends host-a's last will
        await proc.wait()

        def started_on_b() -> set[str]:
            return {s.req.job or "" for s in b.supervisors.values()}
        await until(lambda: {"job-held", "job-behind"} <= started_on_b(),
                    "both of host-a's jobs started on host-b", timeout=60)
        runs = {s.req.job: r for r, s in b.supervisors.items()}
        assert (await b.wait([runs["job-held"], runs["job-behind"]])) == {
            runs["job-held"]: "succeeded", runs["job-behind"]: "succeeded"}
        assert b.job_taker.rescued == ["host-a"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await b.stop()
    rows = JournalReader(b.cfg.db_path).list_runs()
    assert sorted(r["run"] for r in rows) == sorted(runs.values())  # each job ran once
    assert all(r["runner"] == "host-b" for r in rows)


async def test_jobs_submitted_while_no_runner_is_online_run_once_one_comes(
        mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINY_STEPS", "2")
    a = engine_on(mosquitto, tmp_path, "host-a", 2)
    await a.start()  # once: the broker keeps its jobs session from then on
    await taking(a)
    await a.stop()
    for i in range(2):  # nobody is online: the broker keeps them
        await submit_job(mosquitto.config(), job(f"waiting-{i}"))
    again = engine_on(mosquitto, tmp_path, "host-a", 2)
    await again.start()
    try:
        await until(lambda: len(again.supervisors) == 2, "the two waiting jobs started", timeout=60)
        results = await again.wait()
        assert sorted(results.values()) == ["succeeded", "succeeded"]
        assert sorted(s.req.job or "" for s in again.supervisors.values()) == ["job-waiting-0", "job-waiting-1"]
    finally:
        await again.stop()


async def test_a_refused_job_is_a_jobs_row_with_its_reason_never_a_run(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    a = engine_on(mosquitto, tmp_path, "host-a", 1)
    await a.start()
    reader = JournalReader(a.cfg.db_path)
    try:
        await taking(a)
        # the payload claims a submitter; the record names the account the broker authenticated
        await submit_job(mosquitto.config(), job("bad", task="no_such_task", submitted_by="mallory"))
        row = await until(lambda: reader.get_job("job-bad"), "the refused job's row", timeout=20)
        assert row["status"] == "refused" and "unknown task 'no_such_task'" in row["reason"]
        assert row["submitter"] == "tester" and row["runner"] == "host-a" and row["run"] is None
        assert row["task"] == "no_such_task"
        states = await read_job_states(mosquitto.config("viewer"), "job-bad")
        assert [(s.status, s.runner, s.submitter) for s in states] == [("refused", "host-a", "tester")]
        assert "unknown task" in states[0].reason
        assert reader.list_runs() == []
    finally:
        await a.stop()
        reader.close()


async def test_a_thousand_bad_jobs_leave_no_runs_and_few_log_lines(
        mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = engine_on(mosquitto, tmp_path, "host-a", 1)
    await a.start()
    reader = JournalReader(a.cfg.db_path)
    caplog.set_level(logging.WARNING, logger="runner.job_queue")
    try:
        await taking(a)
        operator = mosquitto.config()
        topic = Topics(operator.prefix).jobs_of(str(operator.username))
        async with raw_client(operator) as c:  # one operator's flood, on its own jobs topic
            for i in range(0, 1000, 100):
                await asyncio.gather(*(c.publish(topic, json.dumps(job(f"flood-{n}", task="no_such_task")),
                                                 qos=1) for n in range(i, i + 100)))
        await until(lambda: len(reader.jobs(limit=2000, status="refused")) == 1000,
                    "the thousand refusals recorded", timeout=240, interval=0.5)
        assert reader.list_runs() == []
        lines = [r for r in caplog.records if "refused" in r.getMessage()]
        assert 1 <= len(lines) <= 30, len(lines)  # one line per 10 s with a count, not one per job
        assert a.job_taker.refusals.lines == len(lines)
        # a good job after the flood still runs
        run = await a.submit(Job(task="tiny_train"))
        assert run in a.supervisors
    finally:
        await a.stop()
        reader.close()


def test_refusals_are_logged_once_per_window_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    refusals = RefusalLog(every=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="runner.job_queue")
    for i in range(500):
        now[0] = i * 0.05  # 500 refusals in 25 s
        refusals.note(f"j{i}", "unknown task")
    refusals.flush()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "job j0 refused: unknown task"
    assert "199 more jobs refused in the last 10 s (the last: unknown task)" in messages
    assert len(messages) == refusals.lines == 6


def test_the_latest_state_wins_but_a_start_stays() -> None:
    from runner.job_queue import JobState

    def s(status: str, runner: str, ts: float) -> JobState:
        return JobState(job="j", status=status, runner=runner, ts=ts)  # type: ignore[arg-type]
    assert latest_by_job([s("requeued", "a", 1), s("started", "b", 2)])["j"].runner == "b"
    assert latest_by_job([s("started", "b", 2), s("requeued", "a", 3)])["j"].status == "started"
    assert JobTaker.client_id("host-a") == "mlrb-jobs-host-a"
    assert Topics("mlrb/v1").job_states_of("j") == "mlrb/v1/runner/+/job/j"


class EngineThread:
    """An engine on its own event loop in a thread, so the CLI (which runs its own loop) can
    be driven beside it."""

    def __init__(self, engine: Engine) -> None:
        import threading

        self.engine = engine
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: object, timeout: float = 60) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.call(self.engine.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def test_mlrb_submit_says_queued_and_mlrb_queue_shows_where_each_job_went(
        mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from mlrb_tui.cli import cli
    from tests.conftest import until_blocking

    monkeypatch.setenv("TINY_STEPS", "2")
    operator = mosquitto.config()
    monkeypatch.setenv("MLRB_HOME", str(tmp_path / "operator-home"))
    monkeypatch.setenv("MLRB_BUS_URL", mosquitto.url)
    monkeypatch.setenv("MLRB_BUS_USERNAME", str(operator.username))
    monkeypatch.setenv("MLRB_BUS_PASSWORD", str(operator.password))
    runner = CliRunner()
    # no runner has ever been online: no session would keep the job, so submit refuses it
    first = runner.invoke(cli, ["submit", "tiny_train", "--timeout", "1"])
    assert first.exit_code == 1, first.output
    assert "no runner has ever connected" in first.output
    # a runner's session exists from its first start: from then on, jobs wait for it
    host = EngineThread(engine_on(mosquitto, tmp_path, "host-a", 1))
    try:
        host.call(host.engine.start())
        until_blocking(lambda: host.engine.job_taker.connected, "host-a's jobs connection", timeout=30)
        second = runner.invoke(cli, ["submit", "tiny_train", "--timeout", "60"])
        assert second.exit_code == 0, second.output
        run = second.stdout.strip()
        assert run in host.engine.supervisors and "taken by runner host-a" in second.stderr
        host.call(submit_job(operator, job("refused-one", task="no_such_task")))
        until_blocking(lambda: JournalReader(host.engine.cfg.db_path).jobs(status="refused"),
                       "the refusal recorded", timeout=30)
        shown = runner.invoke(cli, ["queue", "--json"])
        assert shown.exit_code == 0, shown.output
        states = {s["job"]: s for s in json.loads(shown.stdout)}
        assert states["job-refused-one"]["status"] == "refused"
        assert "unknown task" in states["job-refused-one"]["reason"]
        taken = [s for s in states.values() if s["status"] == "started"]
        assert [s["run"] for s in taken] == [run] and taken[0]["runner"] == "host-a"
        assert all(s["submitter"] == "tester" for s in states.values())
        table = runner.invoke(cli, ["queue"]).stdout
        assert "STATE" in table and "refused" in table and run in table
    finally:
        host.close()
    # the runner is offline now but its session waits: the job is queued, and listed as waiting
    third = runner.invoke(cli, ["submit", "tiny_train", "--timeout", "1"])
    assert third.exit_code == 0, third.output
    assert "queued: no runner has taken it yet" in third.stdout
    waiting_id = third.stdout.split()[1]
    shown = runner.invoke(cli, ["queue", "--json"])
    waits = [s for s in json.loads(shown.stdout) if s["job"] == waiting_id]
    assert [(s["status"], s["submitter"], s["task"]) for s in waits] == [("queued", "tester", "tiny_train")]
    assert "waiting" in runner.invoke(cli, ["queue"]).stdout
    # once a runner answers it, the submitter's record gives way to the runner's word
    back = EngineThread(engine_on(mosquitto, tmp_path, "host-a", 1))
    try:
        back.call(back.engine.start())

        def started() -> bool:
            listed = runner.invoke(cli, ["queue", "--json"])
            assert listed.exit_code == 0, listed.output
            got = json.loads(listed.stdout)
            return any(s["job"] == waiting_id and s["status"] == "started" for s in got)
        # the CLI runs its own event loop, so this polls outside one (as until_blocking cannot)
        deadline = time.monotonic() + 60
        while not started():
            assert time.monotonic() < deadline, "the waiting job started by the runner back online"
            time.sleep(0.2)
    finally:
        back.close()


async def test_room_is_a_free_slot_and_the_gpus_the_task_and_scale_need(tmp_path: Path) -> None:
    from runner.engine import SubmitError

    engine = Engine(Config(home=tmp_path / "h", backend="local", max_runs=1), use_bus=False)
    await engine.start()
    try:
        engine.gpus.set_devices([0])
        full, smoke = Job(task="tiny_train", scale="full"), Job(task="tiny_train")
        assert engine.room_for(full) is None and engine.room_for(smoke) is None
        engine.gpus.claim("another-run", [0])
        assert engine.room_for(full) == "0 of the 1 GPUs it needs are free"
        assert engine.room_for(smoke) is None  # the smoke scale needs no GPU
        engine.gpus.set_devices([])
        with pytest.raises(SubmitError, match="unknown task"):  # never startable: refused, full or not
            engine.room_for(Job(task="no_such_task"))
    finally:
        await engine.stop()
