"""`mlrb logs`, `mlrb events` and control commands that wait for the runner's answer, run as
a user runs them (a real `mlrb` process) against journals written by real engine runs and a
real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from runner.bus import Topics
from runner.config import BusTable, Config
from runner.engine import Engine, Job
from runner.escapes import strip_escapes
from runner.events import EventFactory
from runner.journal import Journal, JournalReader
from tests.conftest import Mosquitto, until

FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"
STEP_LINE = re.compile(r"^step (\d+) loss \d+\.\d{4}$")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "MLRB_HOME": str(home), "MLRB_TASKS_PATH": str(FIXTURE_TASKS),
           "MLRB_OPERATOR": "ana@ops", "PYTHONUNBUFFERED": "1", **extra}
    for key in ("MLRB_BUS_URL", "MLRB_BUS_USERNAME", "MLRB_BUS_PASSWORD", "MLRB_CONFIG"):
        if key not in extra:
            env.pop(key, None)
    return env


async def mlrb(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run `mlrb ARGS` in its own process while this loop (an engine) goes on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mlrb_tui.cli", *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def journal_events(db: Path, run: str) -> list[dict]:
    reader = JournalReader(db)
    try:
        return [e.to_dict() for e in reader.events(run, 0, 100_000)]
    finally:
        reader.close()


def output_lines(events: list[dict]) -> list[str]:
    """The sandbox output the journal holds, line by line, per stream as it was written."""
    text: dict[str, str] = {}
    lines: list[str] = []
    for e in events:
        if e["kind"] == "sandbox.output":
            stream = e["data"].get("stream", "stdout")
            pieces = (text.pop(stream, "") + strip_escapes(e["data"]["text"])).split("\n")
            lines += pieces[:-1]
            if pieces[-1]:
                text[stream] = pieces[-1]
    return lines + list(text.values())


async def engine_run(home: Path, monkeypatch: pytest.MonkeyPatch, steps: int, delay: float) -> str:
    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    monkeypatch.setenv("TINY_STEPS", str(steps))
    monkeypatch.setenv("TINY_DELAY", str(delay))
    engine = Engine(Config(home=home, backend="local"), use_bus=False)
    await engine.start()
    try:
        run = await engine.submit(Job(task="tiny_train", agent="scripted"))
        assert (await engine.wait([run]))[run] == "succeeded"
    finally:
        await engine.stop()
    return run


async def test_logs_and_events_of_a_finished_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    run = await engine_run(home, monkeypatch, steps=6, delay=0.0)
    env = cli_env(home)
    stored = journal_events(home / "mlrb.db", run)

    rc, out, err = await mlrb(env, "logs", run)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines == output_lines(stored)
    assert [int(m.group(1)) for m in map(STEP_LINE.match, lines) if m] == list(range(1, 7))
    assert lines[-1] == "saved model/weights.pt"
    # a prefix only this run has names it, as for `mlrb replay`
    assert (await mlrb(env, "logs", run[:-2]))[1] == out

    rc, out, err = await mlrb(env, "events", run, "--json")
    assert rc == 0, err
    printed = [json.loads(line) for line in out.splitlines()]
    assert printed == stored
    assert [e["seq"] for e in printed] == list(range(1, len(stored) + 1))

    rc, out, _ = await mlrb(env, "events", run, "--json", "--kind", "tool.*", "--kind", "run.ended")
    kinds = [json.loads(line)["kind"] for line in out.splitlines()]
    assert rc == 0 and kinds == [e["kind"] for e in stored
                                 if e["kind"].startswith("tool.") or e["kind"] == "run.ended"]
    assert kinds[-1] == "run.ended" and {"tool.call", "tool.result"} <= set(kinds)

    rc, out, _ = await mlrb(env, "events", run)
    lines = out.splitlines()
    assert rc == 0 and len(lines) == len(stored)
    for line, e in zip(lines, stored, strict=True):
        assert re.match(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}} +{e['seq']} {re.escape(e['kind'])}\b",
                        line), line
    assert lines[-1].endswith("run.ended          ended succeeded: submitted")

    rc, _, err = await mlrb(env, "logs", "no-such-run")
    assert rc == 1 and f"no run 'no-such-run' in {home / 'mlrb.db'}" in err
    rc, _, err = await mlrb(env, "events", run, "--kind", "tol.*")
    assert rc == 2 and "'tol.*' matches no event kind" in err


def write(journal: Journal, *events: object) -> None:
    journal.write_sync(list(events))  # type: ignore[arg-type]


async def test_output_escapes_split_lines_and_gaps_a_recorder_may_hold(tmp_path: Path) -> None:
    from mlrb_tui.cli_follow import RunTail

    db = tmp_path / "fleet.db"
    journal = Journal(db)
    f = EventFactory("run-x")
    out = [f.make("run.created", {"task": "tiny_train"}),
           f.make("sandbox.output", {"stream": "stdout", "text": "\x1b[31mred\x1b[0m line\npar"}),
           f.make("sandbox.output", {"stream": "stderr", "text": "err \x1b]0;title\x07line\n"}),
           f.make("sandbox.output", {"stream": "stdout", "text": "tial\n10%\r50%\r100%\n"})]
    missing = f.make("sandbox.output", {"stream": "stdout", "text": "late\n"})
    after = [f.make("sandbox.output", {"stream": "stdout", "text": "no newline"}),
             f.make("run.ended", {"status": "succeeded", "reason": "done"})]
    write(journal, *out, *after)  # seq 5 is not there yet, as a recorder may be before a repair
    env = cli_env(tmp_path / "home")

    rc, text, err = await mlrb(env, "logs", "run-x", "--db", str(db))
    assert rc == 0 and text == "red line\nerr line\npartial\n100%\nno newline\n"
    assert f"warning: seq 5 of run-x are missing from {db}; left out" in err
    rc, text, err = await mlrb(env, "events", "run-x", "--db", str(db), "--json")
    assert [json.loads(line)["seq"] for line in text.splitlines()] == [1, 2, 3, 4, 6, 7]

    # following, what comes after a gap waits for the gap to be filled
    now = [0.0]
    tail = RunTail(db, "run-x", ("sandbox.output",), wait_gaps=True, gap_wait_s=10.0,
                   clock=lambda: now[0])
    tail.open()
    try:
        assert [e.seq for e in tail.poll()] == [2, 3, 4]
        now[0] = 9.0
        assert [e.seq for e in tail.poll()] == [] and not tail.ended
        write(journal, missing)
        assert [e.seq for e in tail.poll()] == [5, 6] and tail.ended and tail.skipped == []
    finally:
        tail.close()
    # and a gap nobody fills is given up on after gap_wait_s, and said
    g = EventFactory("run-y")
    first = g.make("run.created", {})
    g.make("sandbox.output", {"text": "never journaled\n"})
    write(journal, first, g.make("run.ended", {"status": "failed", "reason": "x"}))
    now[0] = 100.0
    tail = RunTail(db, "run-y", wait_gaps=True, gap_wait_s=10.0, clock=lambda: now[0])
    tail.open()
    try:
        assert [e.seq for e in tail.poll()] == [1] and not tail.ended
        now[0] = 110.0
        assert [e.seq for e in tail.poll()] == [3] and tail.ended and tail.skipped == [(2, 2)]
    finally:
        tail.close()
    journal.close()


def test_a_progress_bar_split_over_chunks_prints_its_last_redraw_once() -> None:
    from mlrb_tui.cli_follow import Lines

    lines = Lines()
    assert lines.add("stdout", "start\n10%\r5") == ["start"]
    assert lines.add("stdout", "0%\r") == []
    assert lines.add("stdout", "100%\r\ndone\n") == ["100%", "done"]
    assert lines.add("stderr", "20%\r\x1b[2K40%") == [] and lines.rest() == ["40%"]


async def test_a_prefix_with_the_tasks_underscore_names_its_run(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    journal = Journal(db)
    for run in ("mini_pile-3fa2c1", "mini_pile-3fb000", "miniXpile-3fa2c1"):
        f = EventFactory(run)
        write(journal, f.make("run.created", {"task": "mini_pile"}),
              f.make("sandbox.output", {"stream": "stdout", "text": f"{run}\n"}))
    journal.close()
    reader = JournalReader(db)
    try:  # `_` is matched as itself, not as LIKE's any-character
        assert reader.find_run("mini_pile-3fa")["run"] == "mini_pile-3fa2c1"  # type: ignore[index]
        assert reader.find_run("mini_pile-3f") is None  # two runs
        assert reader.runs_with_prefix("mini_pile-3f") == ["mini_pile-3fa2c1", "mini_pile-3fb000"]
    finally:
        reader.close()
    rc, text, err = await mlrb(cli_env(tmp_path / "home"), "logs", "mini_pile-3fa", "--db", str(db))
    assert rc == 0 and text == "mini_pile-3fa2c1\n", err


async def test_follow_a_live_run_to_its_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    monkeypatch.setenv("TINY_STEPS", "40")
    monkeypatch.setenv("TINY_DELAY", "0.1")
    home = tmp_path / "home"
    env = cli_env(home)
    engine = Engine(Config(home=home, backend="local"), use_bus=False)
    await engine.start()
    try:
        run = await engine.submit(Job(task="tiny_train", agent="scripted"))
        db = home / "mlrb.db"
        reader = JournalReader(db)
        await until(lambda: reader.get_run(run), "the run in the journal")
        reader.close()
        spawned = time.time()
        logs = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mlrb_tui.cli", "logs", run[:-1], "-f", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        events = asyncio.create_task(mlrb(env, "events", run, "-f", "--json", "--kind", "sandbox.*",
                                          timeout=300))
        assert logs.stdout is not None
        first = await asyncio.wait_for(logs.stdout.readline(), 300)
        first_at = time.time()
        rest, err = await asyncio.wait_for(logs.communicate(), 300)
        assert logs.returncode == 0, err.decode()
        assert (await engine.wait([run]))[run] == "succeeded"
        rc, ev_out, ev_err = await events
        assert rc == 0, ev_err
    finally:
        await engine.stop()
    stored = journal_events(db, run)
    ended_at = stored[-1]["ts"]
    assert stored[-1]["kind"] == "run.ended"
    # it followed a live run: started before the end, and printed before the end was journaled
    assert spawned < first_at < ended_at
    lines = (first + rest).decode().splitlines()
    assert lines == output_lines(stored)
    assert [int(m.group(1)) for m in map(STEP_LINE.match, lines) if m] == list(range(1, 41))
    assert len([e for e in stored if e["kind"] == "sandbox.output"]) > 1  # it came in pieces
    followed = [json.loads(line) for line in ev_out.splitlines()]
    assert followed == [e for e in stored if e["kind"].startswith("sandbox.")]


@pytest.fixture
async def live_runner(tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """An engine on the test broker (runner account `h`) with one long run going."""
    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    monkeypatch.setenv("TINY_STEPS", "100000")
    monkeypatch.setenv("TINY_DELAY", "0.05")
    cred = mosquitto.accounts["h"]
    cfg = Config(home=tmp_path / "home", bus_url=mosquitto.url, backend="local",
                 bus=BusTable(username=cred.username, password=cred.password))
    engine = Engine(cfg)
    await engine.start()
    try:
        run = await engine.submit(Job(task="tiny_train", agent="scripted"))
        await until(lambda: engine.publisher.subscribed >= {Topics(cfg.prefix).all_controls},
                    "the runner's control subscription")
        await until(lambda: engine.supervisors[run].status == "running", "the run to start",
                    timeout=60)
        yield engine, run
    finally:
        await engine.stop()


def operator_env(tmp_path: Path, mosquitto: Mosquitto, **extra: str) -> dict[str, str]:
    op = mosquitto.accounts["operator"]
    return cli_env(tmp_path / "home", MLRB_BUS_URL=mosquitto.url, MLRB_BUS_USERNAME=op.username,
                   MLRB_BUS_PASSWORD=op.password or "", **extra)


async def test_control_commands_wait_for_the_runners_answer(tmp_path: Path, mosquitto: Mosquitto,
                                                            live_runner) -> None:  # type: ignore[no-untyped-def]
    engine, run = live_runner
    env = operator_env(tmp_path, mosquitto)

    rc, out, err = await mlrb(env, "resume", run)
    assert (rc, out) == (1, "") and err.strip() == f"resume {run}: refused: run is not paused"
    rc, out, err = await mlrb(env, "approve", run, "call-nobody-made")
    assert rc == 1 and err.strip() == (f"approve {run}: refused: no tool call is waiting for "
                                       "approval with that id")
    rc, out, err = await mlrb(env, "pause", run, "--reason", "look at the loss")
    assert rc == 0, err
    assert out.strip() == f"hold {run}: accepted (the agent stops at its next step)"
    assert engine.supervisors[run].status == "held"  # answered once applied
    rc, out, err = await mlrb(env, "resume", run)
    assert (rc, out.strip()) == (0, f"resume {run}: accepted (resumed)"), err
    rc, out, _ = await mlrb(env, "message", run, "try a smaller learning rate")
    assert (rc, out.strip()) == (0, f"message {run}: accepted (delivered at the agent's next turn)")
    rc, out, _ = await mlrb(env, "limit", run, "steps", "50", "--reason", "enough steps")
    assert (rc, out.strip()) == (0, f"limit {run}: accepted (steps limit is now 50)")
    # a shell opens once its start is recorded; its end is answered too (stdin is empty: it ends)
    rc, out, err = await mlrb(env, "shell", run, "--reason", "look around")
    assert rc == 0, err
    assert out.splitlines() == [f"shell {run}: accepted (shell start)", f"shell {run}: accepted (shell end)"]
    rc, out, _ = await mlrb(env, "kill", run, "--reason", "done looking")
    assert (rc, out.strip()) == (0, f"kill {run}: accepted (killing)")
    assert (await engine.wait([run]))[run] == "killed"
    # the runner still answers for a run of its journal that has ended
    rc, out, err = await mlrb(env, "pause", run, "--freeze")
    assert rc == 1 and err.strip() == f"freeze {run}: refused: run has ended (killed)"

    reader = JournalReader(engine.cfg.db_path)
    try:
        acks = [e.data for e in reader.events(run, 0, 100_000, kinds=["control.ack"])]
        audit = [(r["action"], r["operator"], r["reason"]) for r in reader.interventions(run)]
    finally:
        reader.close()
    assert [(a["action"], a["accepted"]) for a in acks] == [
        ("resume", False), ("approve", False), ("hold", True), ("resume", True), ("message", True),
        ("limit", True), ("shell", True), ("shell", True), ("kill", True), ("freeze", False)]
    assert audit[0] == ("hold", "tester", "look at the loss")  # the broker's account is recorded


async def test_an_unanswered_command_fails_after_its_timeout_and_no_wait_returns_at_once(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    # a broker with no runner subscribed: nobody will ever answer
    env = operator_env(tmp_path, mosquitto)
    started = time.monotonic()
    rc, out, err = await mlrb(env, "pause", "tiny_train-abc123", "--timeout", "1.5")
    waited = time.monotonic() - started
    assert rc == 3 and out == "", err
    assert err.startswith("hold tiny_train-abc123: no answer from its runner in 1.5 s (command ")
    assert "this host's journal has no run 'tiny_train-abc123'" in err
    assert waited >= 1.5
    # the timeout's default comes from [console] ack_timeout_s
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[console]\nack_timeout_s = 0.5\n")
    rc, _, err = await mlrb(env, "kill", "tiny_train-abc123", "--reason", "x")
    assert rc == 3 and "no answer from its runner in 0.5 s" in err
    # --no-wait sends and returns, as before
    started = time.monotonic()
    rc, out, err = await mlrb(env, "kill", "tiny_train-abc123", "--reason", "x", "--no-wait",
                              "--timeout", "60")
    assert rc == 0, err
    assert out.startswith("sent kill to tiny_train-abc123 (command ")
    assert time.monotonic() - started < 60  # it did not wait for an answer
    rc, _, err = await mlrb(env, "pause", "a/b+#")
    assert rc == 1 and "'a/b+#' is not a run id" in err


def test_the_ack_timeout_is_a_positive_number_of_the_console_table(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.config import ConfigError, load_config

    monkeypatch.delenv("MLRB_CONFIG", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    assert load_config(home).ack_timeout_s == 10.0
    (home / "config.toml").write_text("[console]\nack_timeout_s = 2.5\n")
    assert load_config(home).ack_timeout_s == 2.5
    (home / "config.toml").write_text("[console]\nack_timeout_s = 0\n")
    with pytest.raises(ConfigError, match=r"console\.ack_timeout_s must be more than 0"):
        load_config(home)
