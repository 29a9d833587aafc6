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
