"""The console's Textual-free state: fleet fold, run state, replay controller."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrb_tui.replay import SPEEDS, ReplayController, ReplayError
from mlrb_tui.state import (
    FleetState,
    RunState,
    elapsed_of,
    entry_for,
    fmt_duration,
    summarize_args,
)
from runner.events import Event, EventError, EventFactory
from runner.journal import JournalReader
from tests.fixtures.demo_journal import (
    HELD,
    KILLED,
    RUNNING,
    T0,
    demo_events,
    running_events,
    write_demo_journal,
)


@pytest.fixture
def reader(tmp_path: Path) -> JournalReader:
    r = JournalReader(write_demo_journal(tmp_path / "demo.db"))
    yield r
    r.close()


def test_fleet_folds_rows_like_the_journal(reader: JournalReader) -> None:
    fleet = FleetState()
    fleet.apply(demo_events())
    for row in reader.list_runs():
        mine = fleet.rows[row["run"]]
        for key in ("status", "task", "agent", "last_seq", "metric_name", "metric_value",
                    "active_s", "budget_s", "isolated", "flags", "input_tokens"):
            assert mine[key] == row[key], key
    added, changed = fleet.take_changes()
    assert sorted(added) == sorted([RUNNING, HELD, KILLED])
    assert changed == {RUNNING, HELD, KILLED}
    assert fleet.take_changes() == ([], set())


def test_fleet_dedupes_on_run_and_seq() -> None:
    fleet = FleetState()
    evs = running_events()[:10]
    assert fleet.apply(evs) == []
    fleet.take_changes()
    assert fleet.apply(evs[3:7]) == []
    assert fleet.duplicates == 4
    assert fleet.take_changes() == ([], set())


def test_gap_holds_events_back_until_filled() -> None:
    fleet = FleetState()
    evs = running_events()[:12]
    fleet.apply(evs[:4])
    gaps = fleet.apply(evs[7:])
    assert [(g.run, g.after_seq) for g in gaps] == [(RUNNING, 4)]
    assert fleet.last_seq(RUNNING) == 4  # nothing past the gap was folded
    fleet.apply(evs[4:7])  # the backfill arrives
    assert fleet.last_seq(RUNNING) == 12
    assert not fleet.pending


def test_flush_pending_applies_across_an_unfillable_gap() -> None:
    fleet = FleetState()
    evs = running_events()[:8]
    fleet.apply(evs[:2])
    fleet.apply(evs[5:])
    fleet.flush_pending(RUNNING)
    assert fleet.last_seq(RUNNING) == 8


def test_watched_run_gets_live_events_and_acks_are_collected() -> None:
    fleet = FleetState()
    rs = fleet.watch(HELD)
    from tests.fixtures.demo_journal import held_events

    fleet.apply(held_events())
    assert rs.last_seq == len(held_events())
    assert [e.data["command_id"] for e in fleet.acks] == ["cmd-hold-1"]
    assert any(e.label == "hold" and "ada@ops" in e.text for e in rs.interventions)


def test_elapsed_runs_on_only_while_running() -> None:
    row = {"status": "running", "active_s": 100.0, "active_ts": 1000.0}
    assert elapsed_of(row, 1030.0) == 130.0
    assert elapsed_of({**row, "status": "held"}, 1030.0) == 100.0


def test_durations_read_short() -> None:
    assert fmt_duration(75) == "1:15"
    assert fmt_duration(24 * 3600 + 61) == "24:01:01"
    assert fmt_duration(None) == "—"
    assert fmt_duration(30 * 86400 + 5 * 3600 + 59) == "30d05h"  # days: seconds are noise


def test_output_is_bounded_and_escape_free() -> None:
    rs = RunState("r1", max_output=50)
    f = EventFactory("r1")
    rs.apply(f.make("sandbox.output", {"stream": "stdout",
                                       "text": "\x1b[31mred\x1b[0m \x1b]0;title\x07ok\npart"}))
    rs.apply(f.make("sandbox.output", {"stream": "stdout", "text": "ial\x1b[2J\n"}))
    assert list(rs.output) == [("stdout", "red ok"), ("stdout", "partial")]
    for i in range(200):
        rs.apply(f.make("sandbox.output", {"stream": "stderr", "text": f"line {i}\n"}))
    assert len(rs.output) == 50
    assert rs.output[-1] == ("stderr", "line 199")
    assert rs.output_total == 202
    assert all("\x1b" not in line for _, line in rs.output)


def test_metric_series_are_bounded_per_name() -> None:
    rs = RunState("r1", max_points=100)
    f = EventFactory("r1")
    with pytest.raises(EventError):  # a value that is not a number never reaches a series
        f.make("metric", {"step": 0, "values": {"loss": 1.0, "bad": "x"}})
    for step in range(300):
        rs.apply(f.make("metric", {"step": step, "values": {"loss": 1.0 / (step + 1)}}))
    assert list(rs.metrics) == ["loss"]
    assert len(rs.metrics["loss"]) == 100
    assert rs.metrics["loss"][-1] == (299.0, 1.0 / 300)


def test_timeline_entries_summarise_calls_and_results() -> None:
    f = EventFactory("r1")
    call = entry_for(f.make("tool.call", {"id": "a", "name": "bash",
                                          "args": {"command": "python  train.py\n--lr 1"}}))
    assert call is not None and call.text == "bash python train.py --lr 1"
    res = entry_for(f.make("tool.result", {"id": "a", "name": "bash", "ok": False, "exit_code": 2,
                                           "duration_s": 1.25, "output": "boom\nmore\n"}))
    assert res is not None and res.tone == "bad"
    assert res.text == "failed exit 2 1.2s  boom (+1 lines)"
    ack = entry_for(f.make("control.ack", {"action": "resume", "accepted": False,
                                           "reason": "run is not paused"}))
    assert ack is not None and ack.text == "resume refused: run is not paused"
    assert entry_for(f.make("gpu", {"util": 3})) is None
    assert summarize_args({"path": "a.py", "content": "x"}) == "a.py  (+content)"


def test_replay_maps_wall_time_to_journal_time(reader: JournalReader) -> None:
    ctl = ReplayController(reader, RUNNING, speed=10)
    assert ctl.speed == 10 and ctl.position == 0
    evs = ctl.advance(1.0)  # 10 s of journal time
    assert evs and all(e.ts <= T0 + 10.0 for e in evs)
    assert ctl.now_ts == pytest.approx(T0 + 10.0)
    nxt = reader.events(RUNNING, after_seq=ctl.position, limit=1)[0]
    assert nxt.ts > T0 + 10.0
    ctl.toggle()
    assert ctl.advance(100.0) == []  # paused: the clock stands still


def test_replay_cuts_long_quiet_stretches(reader: JournalReader) -> None:
    ctl = ReplayController(reader, RUNNING, speed=1)
    ctl.seek_seq(14)  # the first metric comes 50 s after the training output
    gap = reader.events(RUNNING, after_seq=14, limit=1)[0].ts - ctl.now_ts
    assert gap > 2.0
    assert ctl.advance(2.0)  # at most MAX_GAP_S of wall time passes with nothing shown


def test_replay_speed_ladder(reader: JournalReader) -> None:
    ctl = ReplayController(reader, RUNNING, speed=7)
    assert ctl.speed == 5
    for _ in range(20):
        ctl.faster()
    assert ctl.speed == SPEEDS[-1] == 1000
    for _ in range(20):
        ctl.slower()
    assert ctl.speed == 1


def test_replay_step_and_seek(reader: JournalReader) -> None:
    ctl = ReplayController(reader, RUNNING, window=20)
    ev = ctl.step_forward()
    assert ev is not None and ev.seq == 1 and not ctl.playing
    ctl.step_forward()
    assert ctl.position == 2
    assert ctl.step_back() == 1
    assert ctl.row["status"] == "queued"
    ctl.seek_fraction(1.0)
    assert ctl.position == ctl.max_seq and ctl.finished
    # the row folds lifecycle events from before the window too
    assert ctl.row["status"] == "running" and ctl.row["task"] == "mini_pile"
    assert len(ctl.state.timeline) <= 20
    assert len(ctl.state.metrics["loss"]) == 30  # charts cover the whole run
    half = ctl.seek_fraction(0.5)
    assert half == reader.seq_at(RUNNING, ctl.t0 + (ctl.t1 - ctl.t0) / 2)
    assert all(e.seq <= half for e in ctl.state.timeline)
    ctl.seek_fraction(0.0)
    assert ctl.position == 1  # the first event is at t0


def test_replay_of_unknown_run_is_a_clear_error(reader: JournalReader) -> None:
    with pytest.raises(ReplayError, match="no events"):
        ReplayController(reader, "nope")


def test_runstate_rejects_other_runs_and_repeats() -> None:
    rs = RunState("r1")
    ev = Event("r1", 1, 1.0, "run.started", {})
    assert rs.apply(ev) and not rs.apply(ev)
    assert not rs.apply(Event("r2", 2, 1.0, "run.started", {}))


def _long_run(path: Path) -> list[Event]:
    """A run with every kind the row folds, spread over a few thousand events: usage and
    flags that add up, holds, a series logged once early and two logged for longer than a
    chart keeps (MAX_POINTS), telemetry, an end, and events after the end."""
    from runner.journal import Journal

    f = EventFactory("long")
    t = T0
    evs = [f.make("run.created", {"task": "mini_pile", "agent": "scripted",
                                  "limits": {"time_s": 3600}}, ts=t),
           f.make("run.started", {"elapsed_s": 0.0}, ts=t),
           f.make("sandbox.started", {"backend": "docker", "isolated": True}, ts=t),
           f.make("metric", {"step": 0, "values": {"lr": 0.1}}, ts=t)]
    for i in range(4600):
        ts = t + 1 + i * 0.5
        r = i % 10
        if r < 5:
            evs.append(f.make("metric", {"step": i, "values": {"loss": 1 / (1 + i),
                                                               "acc": i / 5000}}, ts=ts))
        elif r == 5:
            evs.append(f.make("usage", {"model": "m", "input_tokens": 100 + i,
                                        "output_tokens": 7, "cost_usd": 0.0013 * (i % 7)}, ts=ts))
        elif r == 6:
            evs.append(f.make("sandbox.output", {"stream": "stdout", "text": f"line {i}\n"}, ts=ts))
        elif r == 7:
            evs.append(f.make("resource", {"cpu_pct": float(i % 400), "mem_bytes": i << 20,
                                           "elapsed_s": float(i)}, ts=ts))
        elif r == 8:
            evs.append(f.make("gpu", {"device": 0, "util": float(i % 100), "mem_used": i,
                                      "mem_total": 80}, ts=ts))
        else:
            evs.append(f.make("agent.step", {"step": i // 10, "elapsed_s": float(i)}, ts=ts))
        if i % 997 == 0:
            evs.append(f.make("integrity.flag", {"check": "c", "detail": "d"}, ts=ts))
        if i == 1500:
            evs.append(f.make("run.held", {"level": "freeze", "elapsed_s": float(i)}, ts=ts))
        if i == 1800:
            evs.append(f.make("run.resumed", {"elapsed_s": float(i)}, ts=ts))
        if i == 4000:
            evs.append(f.make("score", {"metric": "loss", "value": 0.5}, ts=ts))
            evs.append(f.make("run.ended", {"status": "succeeded", "reason": "done",
                                            "elapsed_s": float(i)}, ts=ts))
        if i == 4300:
            evs.append(f.make("run.ended", {"status": "failed", "reason": "late"}, ts=ts))
    j = Journal(path)
    j.write_sync(evs)
    j.close()
    return evs


def test_replay_seek_shows_what_playing_shows(tmp_path: Path) -> None:
    from runner.journal import RunFold

    evs = _long_run(tmp_path / "long.db")
    reader = JournalReader(tmp_path / "long.db")
    ctl = ReplayController(reader, "long", window=30)
    fold, state = RunFold(), RunState("long")
    marks = {2, 3, 40, 1200, 2000, 2300, 3100, 4200, 4500, len(evs) - 1, len(evs)}
    for ev in evs:  # play from the start, and compare with a seek at each mark
        fold.apply(ev)
        state.apply(ev)
        if ev.seq not in marks:
            continue
        ctl.seek_seq(ev.seq)
        assert ctl.position == ev.seq
        played, sought = fold.rows["long"], ctl.row
        for key in played:
            if key == "cost_usd":
                assert sought[key] == pytest.approx(played[key], rel=1e-12), ev.seq
            else:
                assert sought[key] == played[key], (ev.seq, key)
        assert {k: list(v) for k, v in ctl.state.metrics.items()} == {
            k: list(v) for k, v in state.metrics.items()}, ev.seq
        assert {k: list(v) for k, v in ctl.state.metric_times.items()} == {
            k: list(v) for k, v in state.metric_times.items()}, ev.seq
        shown = list(ctl.state.timeline)
        assert shown and shown == list(state.timeline)[-len(shown):], ev.seq
    assert ctl.row["status"] == "succeeded" and ctl.row["reason"] == "late"
    assert len(ctl.state.metrics["loss"]) == 2000 and ctl.state.metrics["lr"]
    # a jump finds the next error without reading what lies between
    ctl.seek_seq(1)
    flag = ctl.jump_next("error")
    assert flag == next(e.seq for e in evs if e.kind == "integrity.flag")
    assert ctl.row["flags"] == 1
    reader.close()


def test_replay_of_a_journal_with_a_row_that_breaks_its_model(tmp_path: Path) -> None:
    import sqlite3

    path = write_demo_journal(tmp_path / "demo.db")
    with sqlite3.connect(path) as conn:  # one metric of the running run, edited by hand
        seq = conn.execute("select min(seq) from events where run = ? and kind = 'metric'",
                           [RUNNING]).fetchone()[0]
        conn.execute("update events set data = ? where run = ? and seq = ?",
                     ['{"step": 20, "values": {"loss": true}}', RUNNING, seq])
    reader = JournalReader(path)
    ctl = ReplayController(reader, RUNNING, speed=1000)
    played: list[int] = []
    for _ in range(1000):  # bounded: a replay that stalls fails here instead of hanging
        if ctl.finished:
            break
        played += [e.seq for e in ctl.advance(60.0)]
    assert ctl.finished and ctl.position == ctl.max_seq
    assert seq not in played and len(played) == ctl.max_seq - 1
    assert reader.rejects.counts["bad_data"] >= 1
    assert len(ctl.state.metrics["loss"]) == 29  # the other 29 points are there
    reader.close()
