"""Campaigns and results: an in-process engine drives campaigns of the fixture tasks at smoke
scale in the local sandbox; the results commands read what those runs journaled."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import statistics
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runner.campaign import CampaignError, build_spec, load_file, request
from runner.config import Config
from runner.control import ControlCommand
from runner.engine import Engine
from runner.events import EventFactory
from runner.journal import Journal, JournalReader
from tests.conftest import until

FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"


@pytest.fixture
def fixture_tasks(monkeypatch):
    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    monkeypatch.setenv("TINY_STEPS", "2")
    monkeypatch.setenv("TINY_COUNT_DELAY", "0")


async def started(home: Path, max_runs: int = 4) -> Engine:
    engine = Engine(Config(home=home, backend="local", max_runs=max_runs), use_bus=False)
    await engine.start()
    return engine


async def ask(engine: Engine, name: str, update: bool = False, **fields: Any) -> str:
    spec = build_spec(fields)
    return await engine.campaigns.handle(request("run", name, spec=spec.model_dump(mode="json"),
                                                 update=update))


async def settled(engine: Engine, name: str, timeout: float = 240) -> dict[str, Any]:
    """The campaign's row once it is no longer active."""
    assert engine.reader is not None
    reader = engine.reader
    return await until(lambda: (row := reader.get_campaign(name)) and row["state"] != "active" and row,
                       f"campaign {name} to settle", timeout=timeout, interval=0.2)


def event_ts(db: Path, run: str, kind: str) -> float:
    with sqlite3.connect(db) as conn:
        return float(conn.execute("SELECT ts FROM events WHERE run = ? AND kind = ?", (run, kind)).fetchone()[0])


async def test_two_tasks_by_two_repeats_run_four_runs_and_running_it_again_starts_none(tmp_path, fixture_tasks):
    home = tmp_path / "h"
    engine = await started(home)
    try:
        assert await ask(engine, "pair", tasks="tiny_train,tiny_count", repeats=2, max_concurrent=2) == "accepted"
        row = await settled(engine, "pair")
        assert row["state"] == "done" and row["answer"] == "accepted"
        runs = engine.reader.campaign_runs("pair")  # type: ignore[union-attr]
        assert sorted(r["slot"] for r in runs) == ["tiny_count/scripted/1", "tiny_count/scripted/2",
                                                   "tiny_train/scripted/1", "tiny_train/scripted/2"]
        assert {r["status"] for r in runs} == {"succeeded"}
        assert {r["scaffold"] for r in runs} == {"mlrb"} and {r["campaign"] for r in runs} == {"pair"}
        assert await ask(engine, "pair", tasks="tiny_train,tiny_count", repeats=2, max_concurrent=2) == "accepted"
        await settled(engine, "pair")
        assert len(engine.reader.campaign_runs("pair")) == 4  # type: ignore[union-attr]
    finally:
        await engine.stop()
    # a new daemon on the same journal: the campaign is still there, and still finished
    engine = await started(home)
    try:
        assert await ask(engine, "pair", tasks="tiny_train,tiny_count", repeats=2, max_concurrent=2) == "accepted"
        assert (await settled(engine, "pair"))["state"] == "done"
        assert len(engine.reader.campaign_runs("pair")) == 4  # type: ignore[union-attr]
    finally:
        await engine.stop()


async def test_a_changed_spec_is_refused_unless_updated(tmp_path, fixture_tasks):
    engine = await started(tmp_path / "h")
    try:
        assert await ask(engine, "c", tasks="tiny_count") == "accepted"
        await settled(engine, "c")
        answer = await ask(engine, "c", tasks="tiny_count", repeats=2)
        assert answer.startswith("refused") and "repeats" in answer and "--update" in answer
        row = engine.reader.get_campaign("c")  # type: ignore[union-attr]
        assert json.loads(row["spec"])["repeats"] == 1 and row["answer"] == answer
        assert await ask(engine, "c", update=True, tasks="tiny_count", repeats=2) == "accepted"
        await settled(engine, "c")
        runs = engine.reader.campaign_runs("c")  # type: ignore[union-attr]
        assert sorted(r["slot"] for r in runs) == ["tiny_count/scripted/1", "tiny_count/scripted/2"]
    finally:
        await engine.stop()


async def test_a_killed_slot_is_retried_as_a_new_run_of_that_slot(tmp_path, fixture_tasks, monkeypatch):
    monkeypatch.setenv("TINY_COUNT_DELAY", "120")
    engine = await started(tmp_path / "h")
    reader = engine.reader
    assert reader is not None
    try:
        assert await ask(engine, "k", tasks="tiny_count", retries=1) == "accepted"
        first = await until(lambda: [r for r in reader.campaign_runs("k") if r["status"] == "running"],
                            "the slot's first run to start", timeout=120)
        monkeypatch.setenv("TINY_COUNT_DELAY", "0")  # the retry is planned after the kill
        await engine.handle_control(ControlCommand.model_validate(
            {"run": first[0]["run"], "action": "kill", "reason": "wedged", "operator": "ana@ops"}))
        row = await settled(engine, "k")
        runs = reader.campaign_runs("k")
        assert row["state"] == "done"
        assert [(r["slot"], r["status"]) for r in runs] == [("tiny_count/scripted/1", "killed"),
                                                            ("tiny_count/scripted/1", "succeeded")]
        assert runs[0]["run"] == first[0]["run"] and runs[0]["reason"] == "wedged"
    finally:
        await engine.stop()


async def test_a_slot_out_of_retries_is_failed_and_the_campaign_ends(tmp_path, fixture_tasks, monkeypatch):
    monkeypatch.setenv("TINY_COUNT_DELAY", "120")
    engine = await started(tmp_path / "h")
    reader = engine.reader
    assert reader is not None
    try:
        assert await ask(engine, "z", tasks="tiny_count", retries=0) == "accepted"
        run = (await until(lambda: [r for r in reader.campaign_runs("z") if r["status"] == "running"],
                           "the run to start", timeout=120))[0]["run"]
        await engine.handle_control(ControlCommand.model_validate(
            {"run": run, "action": "kill", "reason": "no", "operator": "ana@ops"}))
        row = await settled(engine, "z")
        assert row["state"] == "done" and row["reason"] == "1 slots failed"
        assert [r["status"] for r in reader.campaign_runs("z")] == ["killed"]
    finally:
        await engine.stop()


async def test_max_concurrent_one_never_has_two_of_its_runs_live_at_once(tmp_path, fixture_tasks, monkeypatch):
    monkeypatch.setenv("TINY_COUNT_DELAY", "1")
    home = tmp_path / "h"
    engine = await started(home, max_runs=4)  # the engine would run four: the campaign allows one
    try:
        assert await ask(engine, "one", tasks="tiny_count", repeats=3, max_concurrent=1) == "accepted"
        await settled(engine, "one")
        runs = engine.reader.campaign_runs("one")  # type: ignore[union-attr]
    finally:
        await engine.stop()
    assert len(runs) == 3 and {r["status"] for r in runs} == {"succeeded"}
    spans = sorted((event_ts(home / "mlrb.db", r["run"], "run.created"),
                    event_ts(home / "mlrb.db", r["run"], "run.ended")) for r in runs)
    for (_, ended), (created, _) in zip(spans, spans[1:], strict=False):
        assert created >= ended, spans


async def test_cancel_kills_the_live_runs_with_the_reason_and_starts_no_more(tmp_path, fixture_tasks, monkeypatch):
    monkeypatch.setenv("TINY_COUNT_DELAY", "120")
    engine = await started(tmp_path / "h")
    reader = engine.reader
    assert reader is not None
    try:
        assert await ask(engine, "x", tasks="tiny_count", repeats=3, max_concurrent=2) == "accepted"
        await until(lambda: len([r for r in reader.campaign_runs("x") if r["status"] == "running"]) == 2,
                    "two runs to start", timeout=120)
        answer = await engine.campaigns.handle(request("cancel", "x", reason="budget spent",
                                                       operator="ana@ops"))
        assert answer == "accepted"
        runs = await until(lambda: (rs := reader.campaign_runs("x")) and all(
            r["status"] == "killed" for r in rs) and rs, "the live runs to be killed", timeout=60)
        assert len(runs) == 2 and {r["reason"] for r in runs} == {"budget spent"}
        row = reader.get_campaign("x")
        assert row is not None and row["state"] == "cancelled" and row["reason"] == "budget spent"
        assert engine.campaigns.live_runs("x") == [] or all(
            engine.supervisors[r].ended for r in engine.campaigns.live_runs("x"))
    finally:
        await engine.stop()
    assert len(JournalReader(tmp_path / "h" / "mlrb.db").campaign_runs("x")) == 2


async def test_results_in_every_format_match_the_runs_scores(tmp_path, fixture_tasks, monkeypatch):
    from mlrb_tui.cli import cli

    home = tmp_path / "h"
    engine = await started(home)
    try:
        assert await ask(engine, "r", tasks="tiny_train,tiny_count", repeats=2, max_concurrent=2) == "accepted"
        await settled(engine, "r")
        runs = engine.reader.campaign_runs("r")  # type: ignore[union-attr]
    finally:
        await engine.stop()
    expected = {}
    for task in ("tiny_count", "tiny_train"):
        scores = [r["score"] for r in runs if r["task"] == task]
        assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
        expected[task] = (statistics.fmean(scores), statistics.stdev(scores), max(scores))

    def mlrb(*args: str) -> str:
        out = CliRunner().invoke(cli, list(args), env={"MLRB_HOME": str(home)}, catch_exceptions=False)
        assert out.exit_code == 0, out.output
        return out.output

    rows = json.loads(mlrb("results", "--campaign", "r", "--json"))
    assert [r["task"] for r in rows] == ["tiny_count", "tiny_train"]
    for r in rows:
        mean, std, best = expected[r["task"]]
        assert {k: r[k] for k in ("agent", "scaffold", "runs", "succeeded", "paper")} == {
            "agent": "scripted", "scaffold": "mlrb", "runs": 2, "succeeded": 2, "paper": None}
        assert r["mean"] == pytest.approx(mean) and r["std"] == pytest.approx(std)
        assert r["best"] == pytest.approx(best) and r["cost_usd"] == 0.0 and "model" in r
        assert sorted(r["run_ids"]) == sorted(x["run"] for x in runs if x["task"] == r["task"])
    table = list(csv.DictReader(io.StringIO(mlrb("results", "--campaign", "r", "--csv"))))
    assert [(t["task"], float(t["mean"]), float(t["best"]), int(t["runs"])) for t in table] == [
        (task, pytest.approx(expected[task][0]), pytest.approx(expected[task][2]), 2)
        for task in ("tiny_count", "tiny_train")]
    md = mlrb("results", "--campaign", "r", "--task", "tiny_train", "--markdown").splitlines()
    assert md[0].startswith("| Task | Agent | Scaffold |") and md[1].startswith("|---|")
    cells = [c.strip() for c in md[2].strip("|").split("|")]
    mean, std, best = expected["tiny_train"]
    assert cells[0] == "tiny_train" and cells[6] == f"{mean:.3f} ± {std:.3f}" and cells[7] == f"{best:.3f}"
    assert len(md) == 3  # --task keeps one task's row
    text = mlrb("results", "--campaign", "r")
    assert f"{expected['tiny_count'][0]:.3f}" in text and "tiny_train" in text
    assert json.loads(mlrb("results", "--campaign", "nope", "--json")) == []
    status = json.loads(mlrb("campaign", "status", "r", "--json"))
    assert status["state"] == "done" and status["total"]["done"] == 4
    assert [(t["task"], t["done"], t["running"], t["queued"], t["failed"]) for t in status["tasks"]] == [
        ("tiny_train", 2, 0, 0, 0), ("tiny_count", 2, 0, 0, 0)]
    assert "r " in mlrb("campaign", "list") and "done" in mlrb("campaign", "status", "r")


def test_the_paper_figure_is_given_for_its_model_only():
    from runner.results import paper_figure, results

    assert paper_figure("mini_pile", "claude-3-5-sonnet-20240620").value == 0.541  # type: ignore[union-attr]
    assert paper_figure("mini_pile", "gpt-4o-2024-08-06").value == 0.457  # type: ignore[union-attr]
    assert paper_figure("mini_pile", "gpt-4o-mini") is None
    assert paper_figure("baby_lm", "gpt-4o") is None  # the paper gives no figure for it
    row = {"run": "a", "task": "edge_llm_compression", "agent": "anthropic", "model": "claude-3.5-sonnet",
           "scaffold": "mlrb", "status": "succeeded", "score": 0.3, "cost_usd": 2.0,
           "input_tokens": 10, "output_tokens": 5, "active_s": 60.0, "flags": 1}
    [r] = results([row, {**row, "run": "b", "status": "failed", "score": None, "cost_usd": 4.0}])
    assert (r.paper, r.paper_stat, r.runs, r.succeeded, r.mean, r.std, r.best) == (
        0.551, "best", 2, 1, 0.3, None, 0.3)
    assert (r.cost_usd, r.tokens, r.flags) == (3.0, 15.0, 2)


def test_a_campaign_spec_error_names_the_file_and_the_key(tmp_path, fixture_tasks):
    f = tmp_path / "c.toml"
    f.write_text('tasks = ["tiny_count"]\nrepeats = 2\nmax_concurent = 3\n')
    with pytest.raises(CampaignError, match=r"c\.toml: max_concurent: unknown field"):
        build_spec(load_file(f), where=str(f))
    f.write_text('tasks = "all"\nrepeats = 0\n')
    with pytest.raises(CampaignError, match=r"c\.toml: repeats: Input should be greater"):
        build_spec(load_file(f), where=str(f))
    f.write_text('tasks = "tiny_count"\nagents = "scripted,mystery"\n')
    with pytest.raises(CampaignError, match=r"agents: .*'mystery' is not scripted"):
        build_spec(load_file(f), where=str(f))
    f.write_text('tasks = "nope"\n')
    with pytest.raises(CampaignError, match=r"tasks: unknown task 'nope'"):
        build_spec(load_file(f), where=str(f))
    f.write_text("tasks = [\n")
    with pytest.raises(CampaignError, match=r"c\.toml: not valid TOML"):
        load_file(f)
    spec = build_spec({"tasks": "all", "agents": ["scripted", "anthropic:claude-sonnet-4-5"],
                       "limits": {"time_s": 60}})
    assert "tiny_count" in spec.tasks and "tiny_train" in spec.tasks
    assert [s.id for s in spec.slots()][:2] == [f"{spec.tasks[0]}/scripted/1",
                                                f"{spec.tasks[0]}/anthropic:claude-sonnet-4-5/1"]


def test_a_journal_from_before_campaigns_gains_the_columns_when_opened(tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE runs (run TEXT PRIMARY KEY, task TEXT, agent TEXT, model TEXT, "
                       "scale TEXT, runner TEXT, status TEXT NOT NULL DEFAULT 'queued', reason TEXT, "
                       "created_ts REAL, started_ts REAL, ended_ts REAL, updated_ts REAL, "
                       "last_seq INTEGER NOT NULL DEFAULT 0, budget_s REAL, "
                       "active_s REAL NOT NULL DEFAULT 0, active_ts REAL, metric_name TEXT, "
                       "metric_value REAL, metric_step INTEGER, score REAL, score_metric TEXT, "
                       "input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0, "
                       "cost_usd REAL NOT NULL DEFAULT 0, cpu_pct REAL, mem_bytes INTEGER, "
                       "mem_limit INTEGER, cpu_limit REAL, gpu_util REAL, gpu_mem_used INTEGER, "
                       "gpu_mem_total INTEGER, sandbox TEXT, isolated INTEGER, "
                       "flags INTEGER NOT NULL DEFAULT 0, steps INTEGER NOT NULL DEFAULT 0);"
                       "INSERT INTO runs (run, task, status, last_seq) VALUES ('old-1', 'mini_pile', 'succeeded', 3);")
    conn.close()
    assert JournalReader(db).campaign_runs("c") == [] and JournalReader(db).campaigns() == []
    j = Journal(db)
    f = EventFactory("new-1")
    j.write_sync([f.make("run.created", {"task": "tiny_count", "campaign": "c", "slot": "tiny_count/scripted/1",
                                         "scaffold": "mlrb"})])
    j.close()
    reader = JournalReader(db)
    assert reader.get_run("old-1")["campaign"] is None  # type: ignore[index]
    assert [(r["run"], r["slot"], r["scaffold"]) for r in reader.campaign_runs("c")] == [
        ("new-1", "tiny_count/scripted/1", "mlrb")]


def mlrb(env, *args, check=True):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mlrb_tui.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"mlrb {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli_env(tmp_path):
    import os
    import subprocess
    import sys

    e = {**os.environ, "MLRB_HOME": str(tmp_path / "home"), "MLRB_TASKS_PATH": str(FIXTURE_TASKS),
         "MLRB_OPERATOR": "ana@ops", "MLRB_SANDBOX": "local", "TINY_STEPS": "2",
         "TINY_COUNT_DELAY": "0", "PYTHONUNBUFFERED": "1"}
    e.pop("MLRB_BUS_URL", None)
    yield e
    subprocess.run([sys.executable, "-m", "mlrb_tui.cli", "down"], env=e, capture_output=True, timeout=120)


def test_the_daemon_drives_a_campaign_on_across_a_restart(cli_env, tmp_path):
    from tests.conftest import require, until_blocking

    require(Path("/usr/sbin/mosquitto").exists(), "mosquitto")
    mlrb({**cli_env, "TINY_COUNT_DELAY": "120"}, "up")  # the first daemon's runs last
    out = mlrb(cli_env, "campaign", "run", "night", "--tasks", "tiny_count,tiny_train",
               "--max-concurrent", "1", "--retries", "0").stdout
    assert "night: 2 slots (2 tasks × 1 agents × 1 repeats)" in out

    def status():
        return json.loads(mlrb(cli_env, "campaign", "status", "night", "--json").stdout)

    until_blocking(lambda: status()["total"]["running"] == 1, "the first slot to run", timeout=120)
    runs = json.loads(mlrb(cli_env, "runs", "--json").stdout)
    assert [(r["slot"], r["campaign"], r["scaffold"]) for r in runs] == [("tiny_count/scripted/1", "night", "mlrb")]
    mlrb(cli_env, "down")  # its live run ends with the daemon: that costs the slot no retry
    mlrb(cli_env, "up")
    done = until_blocking(lambda: (s := status())["state"] == "done" and s, "the campaign to finish",
                          timeout=300, interval=0.5)
    assert (done["total"]["done"], done["total"]["failed"], done["total"]["runs"]) == (2, 0, 3)
    first = next(s for s in done["slots"] if s["slot"] == "tiny_count/scripted/1")
    runs = {r["run"]: r for r in json.loads(mlrb(cli_env, "runs", "--json").stdout)}
    assert [runs[r]["status"] for r in first["runs"]] == ["killed", "succeeded"]
    assert runs[first["runs"][0]]["reason"] == "the runner daemon was stopped"

    bad = mlrb(cli_env, "campaign", "run", "night", "--tasks", "tiny_count", check=False)
    assert bad.returncode == 1 and "different tasks; pass --update" in bad.stderr
    mlrb(cli_env, "campaign", "run", "night")  # the same campaign again: nothing left to run
    until_blocking(lambda: status()["state"] == "done", "the campaign to settle", timeout=60)
    assert len(json.loads(mlrb(cli_env, "runs", "--json").stdout)) == 3
    rows = json.loads(mlrb(cli_env, "results", "--campaign", "night", "--json").stdout)
    assert [(r["task"], r["runs"], r["succeeded"]) for r in rows] == [("tiny_count", 2, 1), ("tiny_train", 1, 1)]
    assert "night" in mlrb(cli_env, "campaign", "list").stdout

    f = tmp_path / "c.toml"
    f.write_text('tasks = ["tiny_count"]\nrepeat = 2\n')
    typo = mlrb(cli_env, "campaign", "run", "other", "--file", str(f), check=False)
    assert typo.returncode == 1 and typo.stderr.strip().splitlines() == [
        f"Error: {f}: repeat: unknown field (use {', '.join(('tasks', 'agents', 'repeats', 'scale', 'max_concurrent', 'retries', 'limits', 'scaffold', 'thinking_tokens', 'reasoning_effort'))})"]
    gone = mlrb(cli_env, "campaign", "cancel", "nothing", "--reason", "x", check=False)
    assert gone.returncode == 1 and "no campaign 'nothing'" in gone.stderr
