"""Results state how each score was computed: the scorer's details.method travels from the score
event through the journal's runs row into `mlrb results` in every format."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from mlrb_tui.cli import cli
from runner.events import EventFactory
from runner.journal import Journal, JournalReader
from runner.results import method_text, results

NOW = 1_780_000_000.0
SUPERGLUE = {"evaluator": "lm-eval", "lm_eval_version": "0.4.8", "tasks": ["super-glue-lm-eval-v1"],
             "aggregate": "unweighted mean of acc,none over 7 subtasks: boolq, cb, copa, multirc, rte, wic, wsc",
             "metric": "acc,none", "subtasks": ["boolq", "cb", "copa", "multirc", "rte", "wic", "wsc"],
             "left_out": {"record": ["em,none", "f1,none"]}, "dtype": "float16", "batch_size": 8,
             "num_fewshot": "task default", "device": "cuda:0"}


def journal_runs(db: Path, runs: dict[str, tuple[float, dict[str, Any] | None]]) -> None:
    """Ended mini_pile runs, each with a final score whose details carry `method` (or none)."""
    journal = Journal(db)
    try:
        for i, (run, (value, method)) in enumerate(runs.items()):
            f = EventFactory(run)
            details = {"model": "model", "params": 1000, **({"method": method} if method else {})}
            journal.write_sync([
                f.make("run.created", {"task": "mini_pile", "agent": "anthropic", "model": "claude-3-5-sonnet-20240620",
                                       "scaffold": "mlrb", "scale": "full"}, ts=NOW + i),
                f.make("score", {"metric": "superglue", "value": value, "final": True, "details": details},
                       ts=NOW + 10 + i),
                f.make("run.ended", {"status": "succeeded", "reason": "submitted"}, ts=NOW + 11 + i)])
    finally:
        journal.close()


def test_the_runs_row_keeps_the_final_scores_method_and_results_carry_it(tmp_path: Path) -> None:
    db = tmp_path / "h" / "mlrb.db"
    journal_runs(db, {"r1": (0.61, SUPERGLUE), "r2": (0.59, SUPERGLUE)})
    reader = JournalReader(db)
    try:
        rows = reader.list_runs()
    finally:
        reader.close()
    assert [json.loads(r["score_method"]) for r in rows] == [SUPERGLUE, SUPERGLUE]
    [row] = results(rows)
    assert row.method == SUPERGLUE and row.methods == (SUPERGLUE,)
    assert row.run_scores == (0.61, 0.59) and row.run_statuses == ("succeeded", "succeeded")

    def mlrb(*args: str) -> str:
        out = CliRunner().invoke(cli, list(args), env={"MLRB_HOME": str(tmp_path / "h")}, catch_exceptions=False)
        assert out.exit_code == 0, out.output
        return out.output

    [js] = json.loads(mlrb("results", "--json"))
    assert js["method"] == SUPERGLUE and js["methods"] == [SUPERGLUE]
    assert js["run_scores"] == [0.61, 0.59] and js["run_ids"] == ["r1", "r2"]
    [line] = list(csv.DictReader(io.StringIO(mlrb("results", "--csv"))))
    assert line["method"] == method_text(SUPERGLUE)
    for stated in ("lm-eval 0.4.8", "unweighted mean of acc,none over 7 subtasks: boolq, cb, copa",
                   "left out: record (em,none/f1,none)", "dtype float16", "batch size 8"):
        assert stated in line["method"]
    text = mlrb("results")
    assert "scored by:" in text and f"mini_pile anthropic:claude-3-5-sonnet-20240620: {method_text(SUPERGLUE)}" in text


def test_runs_scored_two_ways_are_both_stated_and_none_is_taken_for_the_row(tmp_path: Path) -> None:
    other = {**SUPERGLUE, "lm_eval_version": "0.4.9", "batch_size": 16}
    journal_runs(tmp_path / "j.db", {"a": (0.5, SUPERGLUE), "b": (0.6, other), "c": (0.55, None)})
    reader = JournalReader(tmp_path / "j.db")
    try:
        [row] = results(reader.list_runs())
    finally:
        reader.close()
    assert row.methods == (SUPERGLUE, other) and row.method is None
    assert row.to_json()["method"] is None and row.run_scores == (0.5, 0.6, 0.55)


def test_a_journal_from_before_gets_the_score_method_column(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    journal_runs(db, {"r1": (0.5, None)})
    with sqlite3.connect(db) as conn:  # as a journal written before the column existed
        conn.execute("ALTER TABLE runs DROP COLUMN score_method")
    journal_runs(db, {"r2": (0.7, SUPERGLUE)})
    reader = JournalReader(db)
    try:
        rows = {r["run"]: r for r in reader.list_runs()}
    finally:
        reader.close()
    assert rows["r1"]["score_method"] is None and json.loads(rows["r2"]["score_method"]) == SUPERGLUE
