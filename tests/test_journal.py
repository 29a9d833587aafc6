import json
import sqlite3
import subprocess

import pytest

from runner.events import EventFactory
from runner.journal import Journal, JournalReader


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "j.db")
    yield j
    j.close()


def _run_events(run="demo-1", n=50):
    f = EventFactory(run)
    evs = [f.make("run.created", {"task": "mini_pile", "agent": "scripted", "scale": "smoke",
                                  "limits": {"time_s": 600}}),
           f.make("run.started", {"elapsed_s": 0})]
    for i in range(n):
        evs.append(f.make("metric", {"step": i, "values": {"loss": 2.0 - i / n, "lr": 0.001}}))
    evs.append(f.make("resource", {"cpu_pct": 150.0, "mem_bytes": 10, "mem_limit": 100}))
    evs.append(f.make("operator.hold", {"operator": "ana@host", "reason": "look", "command_id": "c1"}))
    evs.append(f.make("run.held", {"level": "hold", "elapsed_s": 12.5}))
    evs.append(f.make("score", {"metric": "superglue", "value": 0.51, "final": True}))
    evs.append(f.make("run.ended", {"status": "succeeded", "reason": "submitted", "elapsed_s": 30}))
    return evs


def test_write_read_and_side_tables(journal, tmp_path):
    evs = _run_events()
    journal.write_sync(evs)
    r = JournalReader(tmp_path / "j.db")
    run = r.get_run("demo-1")
    assert run["status"] == "succeeded"
    assert run["task"] == "mini_pile" and run["budget_s"] == 600
    assert run["metric_name"] == "loss" and run["metric_step"] == 49
    assert run["active_s"] == 30 and run["score"] == 0.51
    assert run["cpu_pct"] == 150.0
    assert len(r.metrics("demo-1", "loss")) == 50
    assert r.interventions("demo-1")[0]["operator"] == "ana@host"
    assert r.events("demo-1", after_seq=0, limit=3)[2].kind == "metric"
    assert r.max_seq("demo-1") == len(evs)


def test_resent_events_are_no_ops(journal, tmp_path):
    evs = _run_events()
    journal.write_sync(evs)
    journal.write_sync(evs[:10])  # a re-send after an outage
    r = JournalReader(tmp_path / "j.db")
    assert r.max_seq("demo-1") == len(evs)
    assert len(r.metrics("demo-1", "loss")) == 50
    assert r.get_run("demo-1")["status"] == "succeeded"
    conn = sqlite3.connect(tmp_path / "j.db")
    assert conn.execute("select count(*) from events").fetchone()[0] == len(evs)


def test_paging_and_seek(journal, tmp_path):
    f = EventFactory("long")
    evs = [f.make("metric", {"step": i, "values": {"x": i}}, ts=1000.0 + i) for i in range(1000)]
    journal.write_sync(evs)
    r = JournalReader(tmp_path / "j.db")
    page = r.events("long", after_seq=500, limit=10)
    assert [e.seq for e in page] == list(range(501, 511))
    before = r.events_before("long", before_seq=100, limit=5)
    assert [e.seq for e in before] == [95, 96, 97, 98, 99]
    assert r.seq_at("long", 1000.0 + 250.5) == 251
    assert r.ts_range("long") == (1000.0, 1999.0)
    assert r.next_seq_of("long", 10, ["metric"]) == 11
    assert r.next_seq_of("long", 10, ["score"]) is None


def test_journal_survives_reopen_and_a_bad_batch(tmp_path):
    j = Journal(tmp_path / "j.db")
    j.write_sync(_run_events("a", 3))
    j.close()
    j2 = Journal(tmp_path / "j.db")
    assert j2.last_seq("a") == 3 + 7
    j2.close()


def test_the_file_opens_in_sqlite3(journal, tmp_path):
    journal.write_sync(_run_events())
    out = subprocess.run(["sqlite3", str(tmp_path / "j.db"), "select run, status from runs"],
                         capture_output=True, text=True)
    if out.returncode == 127:
        pytest.skip("sqlite3 CLI missing")
    assert out.stdout.strip() == "demo-1|succeeded"


async def test_the_file_opens_in_datasette(journal, tmp_path):
    from datasette.app import Datasette

    journal.write_sync(_run_events())
    ds = Datasette([str(tmp_path / "j.db")])
    runs = (await ds.client.get("/j/runs.json?_shape=array")).json()
    assert [(r["run"], r["status"], r["task"]) for r in runs] == [("demo-1", "succeeded", "mini_pile")]
    audit = (await ds.client.get("/j/interventions.json?_shape=array")).json()
    assert audit[0]["action"] == "hold" and audit[0]["operator"] == "ana@host"


def test_seek_queries_are_index_seeks(journal, tmp_path):
    f = EventFactory("big")
    evs = [f.make("run.created", {"task": "t"}, ts=1000.0)]
    for i in range(3000):
        kind = ("metric", "sandbox.output", "usage")[i % 3]
        data = {"step": i, "values": {"b": i, "a": -i}} if kind == "metric" else (
            {"input_tokens": 2, "output_tokens": 1, "cost_usd": 0.5} if kind == "usage"
            else {"stream": "stdout", "text": "x"})
        evs.append(f.make(kind, data, ts=1001.0 + i))
    evs.append(f.make("metric", {"step": 9, "values": {"late": 1.0}}, ts=5000.0))
    journal.write_sync(evs)
    r = JournalReader(tmp_path / "j.db")
    last = r.latest_events("big", ["metric", "run.created", "gpu", "usage"], before_seq=1000)
    assert [(e.kind, e.seq) for e in last] == [("run.created", 1), ("usage", 997),
                                               ("metric", 998)]
    assert [e.seq for e in r.first_events("big", ["usage", "metric"], before_seq=1000)] == [2, 4]
    assert r.count_kind("big", "usage", before_seq=11) == 3
    assert r.usage_totals("big", before_seq=11) == {"input_tokens": 6, "output_tokens": 3,
                                                    "cost_usd": 1.5}
    assert r.usage_totals("nope", before_seq=11)["input_tokens"] == 0
    tails = r.metric_tails("big", before_seq=3000, points=3)
    # series in the order they first appeared, each its last 3 points, oldest first
    assert [(t["name"], t["seq"]) for t in tails] == [
        ("a", 2993), ("a", 2996), ("a", 2999), ("b", 2993), ("b", 2996), ("b", 2999)]
    assert r.metric_tails("big", before_seq=3000, points=3, max_names=1)[0]["name"] == "a"
    assert {t["name"] for t in r.metric_tails("big", before_seq=9999, points=1)} == {"a", "b", "late"}
    assert r.seq_at("big", 1500.5) == 501
    assert r.seq_at("big", 10.0) == 0
    # each query a seek picks is an index search, never a scan of the run
    plans = {
        "seq_at": ("SELECT seq FROM events WHERE run = ? AND ts <= ? "
                   "ORDER BY ts DESC, seq DESC LIMIT 1", ["big", 1500.0]),
        "edge": ("SELECT * FROM events WHERE run = ? AND seq = (SELECT MAX(seq) FROM events "
                 "WHERE run = ? AND kind = ? AND seq < ?)", ["big", "big", "gpu", 2000]),
        "tail": ("SELECT * FROM metrics WHERE run = ? AND name = ? AND seq < ? "
                 "ORDER BY seq DESC LIMIT ?", ["big", "a", 2000, 10]),
        "names": ("SELECT MIN(name) AS n FROM metrics WHERE run = ? AND name > ?", ["big", "a"]),
    }
    conn = sqlite3.connect(tmp_path / "j.db")
    for name, (sql, params) in plans.items():
        plan = " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "SCAN" not in plan and "TEMP B-TREE" not in plan, (name, plan)
        assert "INDEX" in plan or "PRIMARY KEY (run=? AND" in plan, (name, plan)
    r.close()


def test_side_tables_hold_the_typed_fields(journal, tmp_path):
    f = EventFactory("typed")
    journal.write_sync([
        f.make("metric", {"step": 3, "values": {"loss": 1, "acc": 0.5}}),  # an int value is a number
        f.make("gpu", {"device": 0, "util": 97, "mem_used": 5, "mem_total": 10, "power_w": 300,
                       "temp_c": 60.0}),
        f.make("usage", {"model": "m", "input_tokens": 7, "output_tokens": 3, "cost_usd": 0.25}),
        f.make("operator.limit", {"operator": "ana@host", "reason": "more", "command_id": "c9",
                                  "ts_sent": 1.5, "name": "steps", "value": 50.0}),
        f.make("integrity.flag", {"check": "c", "detail": "d"}),
    ])
    conn = sqlite3.connect(tmp_path / "j.db")
    rows = conn.execute("select name, step, value, typeof(value) from metrics where run = 'typed' "
                        "order by name").fetchall()
    assert rows == [("acc", 3, 0.5, "real"), ("loss", 3, 1.0, "real")]
    assert conn.execute("select device, util, mem_used, power_w from gpu_samples").fetchone() == (
        0, 97.0, 5, 300.0)
    assert conn.execute("select input_tokens, output_tokens, cost_usd from usage").fetchone() == (
        7, 3, 0.25)
    action, operator, detail = conn.execute(
        "select action, operator, detail from interventions").fetchone()
    assert (action, operator) == ("limit", "ana@host")
    assert json.loads(detail) == {"ts_sent": 1.5, "name": "steps", "value": 50.0}
    assert conn.execute('select "check", severity from integrity').fetchone() == ("c", "warning")
    run = JournalReader(tmp_path / "j.db").get_run("typed")
    assert (run["metric_name"], run["metric_value"], run["gpu_util"], run["input_tokens"],
            run["flags"]) == ("loss", 1.0, 97.0, 7, 1)


def test_a_row_that_breaks_its_model_is_left_out_and_counted(journal, tmp_path):
    evs = _run_events("tampered", n=5)
    journal.write_sync(evs)
    conn = sqlite3.connect(tmp_path / "j.db")
    with conn:  # edited by hand, or written by something that does not keep the contract
        conn.execute("update events set data = ? where run = 'tampered' and seq = 3",
                     [json.dumps({"step": 0, "values": {"loss": "low"}})])
        conn.execute("update events set data = ? where run = 'tampered' and seq = 4",
                     [json.dumps({"step": 1, "values": {"loss": 1.0}, "sudo": True})])
        conn.execute("update events set data = '{not json' where run = 'tampered' and seq = 5")
        conn.execute("update events set kind = 'agent.teleport' where run = 'tampered' and seq = 6")
    r = JournalReader(tmp_path / "j.db")
    seqs = [e.seq for e in r.events("tampered")]
    assert seqs == [1, 2, *range(7, len(evs) + 1)]
    assert dict(r.rejects.counts) == {"bad_data": 2, "bad_json": 1, "unknown_kind": 1}
    assert r.rejects.last["bad_data"].startswith("tampered#4: bad_data: metric sudo")
    assert [e.seq for e in r.events_before("tampered", 8)] == [1, 2, 7]
    assert r.latest_events("tampered", ["metric"], before_seq=6) == []  # the last one is bad
    assert [e.seq for e in r.latest_events("tampered", ["metric"], before_seq=8)] == [7]
