"""Comparing runs: marked on the dashboard (space, then c) or a results row's runs (c), ended
runs read from the journal and live runs followed, through Pilot; the step alignment and the
divergence without a terminal; and an SVG snapshot of the compare screen at 120×40."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets.data_table import ColumnKey

from mlrb_tui.app import MLRBApp
from mlrb_tui.comparison import (
    DIFFERENT,
    MAX_POINTS,
    SAME,
    SAME_TOOLS,
    Call,
    RunTrack,
    align,
    curves,
    divergence,
    read_track,
)
from mlrb_tui.screens.compare import CompareScreen
from mlrb_tui.screens.results import ResultsScreen
from mlrb_tui.screenshots import SCENES, scene_app
from runner.events import Event, EventFactory
from runner.journal import Journal, JournalReader
from tests.fixtures.compare_journal import (
    CALLS,
    CLAUDE_1,
    CLAUDE_2,
    GPT_1,
    RUNS,
    compare_events,
    loss_at,
)
from tests.fixtures.console_app import SIZE, Catcher, Feed, make_app, started, until
from tests.fixtures.demo_journal import HELD, NOW, RUNNING, scored_events, write_demo_journal


def journal_with(tmp_path: Path, *more: list[Event]) -> Path:
    path = write_demo_journal(tmp_path / "journal.db")
    journal = Journal(path)
    try:
        for events in more:
            journal.write_sync(events)
    finally:
        journal.close()
    return path


def tracks_of(*runs: str) -> list[RunTrack]:
    tracks = {r: RunTrack(r) for r in runs}
    for ev in compare_events():
        if ev.run in tracks:
            tracks[ev.run].apply([ev])
    return list(tracks.values())


async def compare_marked(pilot: Pilot[None], app: MLRBApp, *runs: str) -> CompareScreen:
    """Mark `runs` on the dashboard with space, press c, wait for the journal's first read."""
    table = app.dashboard.table  # type: ignore[union-attr]
    await until(pilot, lambda: all(r in table.shown for r in runs))
    for run in runs:
        table.move_cursor(table.row_index(run))
        await pilot.press("space")
    assert table.marked == set(runs)
    assert "● " in table.cell_text(runs[0], "run")  # the mark shows in the row
    await pilot.press("c")
    await until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded)
    screen = app.screen
    assert isinstance(screen, CompareScreen)
    return screen


def test_steps_align_and_the_first_step_where_tools_part_is_the_divergence() -> None:
    rows = align(tracks_of(CLAUDE_1, CLAUDE_2))
    assert [r.step for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    # the same call; the same tool with other content; other tools; one run has ended
    assert [r.agreement for r in rows] == [SAME, SAME, SAME_TOOLS, DIFFERENT, SAME_TOOLS,
                                           DIFFERENT, DIFFERENT]
    assert divergence(rows) == 4
    assert rows[6].calls[0] is None and rows[6].calls[1] is not None
    assert [c.name for c in rows[5].calls[1] or ()] == ["bash", "read_file"]
    three = align(tracks_of(CLAUDE_1, CLAUDE_2, GPT_1))
    assert divergence(three) == 2  # gpt reads the file the others cat
    assert divergence(align(tracks_of(CLAUDE_1, CLAUDE_1))) is None


def test_curves_are_per_run_against_step_or_minutes_since_the_start() -> None:
    tracks = [RunTrack(CLAUDE_1), RunTrack(CLAUDE_2)]
    for t in tracks:
        t.add_metric_rows([{"seq": 10 + i, "name": "loss", "step": 100 * i, "value": 3.0 - i,
                            "ts": 1000.0 + 60 * i} for i in range(3)])
    tracks[1].add_metric_rows([{"seq": 20, "name": "lr", "step": None, "value": 0.1, "ts": 1200.0}])
    by_step = curves(tracks, "loss", "step", {})
    assert [(run, xs) for run, xs, _ in by_step] == [(CLAUDE_1, [0.0, 100.0, 200.0]),
                                                   (CLAUDE_2, [0.0, 100.0, 200.0])]
    by_time = curves(tracks, "loss", "time", {CLAUDE_1: 1000.0, CLAUDE_2: 940.0})
    assert [xs for _, xs, _ in by_time] == [[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]]
    assert curves(tracks, "lr", "step", {}) == [(CLAUDE_2, [20.0], [0.1])]  # no step: its seq


def test_a_long_run_is_read_to_its_last_points_then_followed(tmp_path: Path) -> None:
    f = EventFactory("r-long")
    evs = [f.make("run.created", {"task": "mini_pile"}, ts=0.0)]
    evs += [f.make("metric", {"step": i, "values": {"loss": float(i)}}, ts=float(i))
            for i in range(MAX_POINTS + 500)]
    journal = Journal(tmp_path / "j.db")
    journal.write_sync(evs)
    reader = JournalReader(tmp_path / "j.db")
    try:
        track = RunTrack("r-long")
        track.take(read_track(reader, track))
        loss = track.metrics["loss"]
        assert len(loss) == MAX_POINTS and loss[0].step == 500 and loss[-1].step == MAX_POINTS + 499
        assert track.metric_seq == MAX_POINTS + 501
        track.read_to = track.seen
        journal.write_sync([f.make("agent.step", {"step": 1}, ts=9e3),
                            f.make("tool.call", {"id": "x", "name": "bash", "args": {}}, ts=9e3),
                            f.make("metric", {"step": 9999, "values": {"loss": -1.0}}, ts=9e3)])
        read = read_track(reader, track)
        assert [r["step"] for r in read.metric_rows] == [9999] and not read.more
        track.take(read)
        assert len(loss) == MAX_POINTS and loss[-1].value == -1.0
        assert track.steps == {1: [Call("bash", "{}", track.steps[1][0].args)]}
    finally:
        reader.close()
        journal.close()


async def test_space_marks_c_compares_the_table_the_curves_and_the_divergence(tmp_path: Path) -> None:
    app = MLRBApp(journal_with(tmp_path, compare_events()), None, operator="ada@ops",
                  clock=lambda: NOW)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await started(pilot)
        table = app.dashboard.table  # type: ignore[union-attr]
        await until(pilot, lambda: CLAUDE_2 in table.shown)
        table.move_cursor(table.row_index(CLAUDE_1))
        await pilot.press("space", "c")  # one marked: nothing to compare
        assert app.screen is app.dashboard
        assert any("mark two or more runs (space) to compare them: 1 marked" in n.message
                   for n in app._notifications)
        await pilot.press("up", "space")
        screen = await compare_marked(pilot, app, CLAUDE_1, CLAUDE_2)
        assert screen.runs == [CLAUDE_1, CLAUDE_2]
        expect = {
            CLAUDE_1: {"status": "succeeded", "score": "0.55 loss", "cost": "$0.2100",
                       "tokens": "23,100", "steps": "6", "time": "6:31 / 30:00", "flags": "0",
                       "scaffold": "mlrb", "model": "claude-3-5-sonnet-20240620",
                       "task": "mini_pile", "agent": "anthropic"},
            CLAUDE_2: {"status": "succeeded", "score": "0.49 loss", "cost": "$0.2800",
                       "tokens": "30,800", "steps": "7", "time": "9:26 / 30:00", "flags": "1",
                       "scaffold": "mlrb", "model": "claude-3-5-sonnet-20240620",
                       "task": "mini_pile", "agent": "anthropic"},
        }
        for run, fields in expect.items():
            assert {f: screen.cell(run, f) for f in fields} == fields
        # one chart per metric name, one line per run that logged it
        charts = screen.charts
        await until(pilot, lambda: len(screen.query(".compare-chart")) == 3)
        assert charts.names == ["accuracy", "loss", "lr"]
        assert [run for run, _, _ in charts.drawn["loss"]] == [CLAUDE_1, CLAUDE_2]
        assert [run for run, _, _ in charts.drawn["lr"]] == [CLAUDE_2]
        assert charts.colours == {CLAUDE_1: "blue+", CLAUDE_2: "green+"}  # the same in every chart
        floors = {r[0]: r[6] for r in RUNS}
        for run, xs, ys in charts.drawn["loss"]:
            assert xs == [100.0 * p for p in range(1, 11)]
            assert ys == [loss_at(floors[run], 100 * p) for p in range(1, 11)]
        await pilot.press("X")  # minutes since each run started
        assert charts.x_axis == "time"
        first = {r[0]: r[5] for r in RUNS}  # seconds between points
        for run, xs, _ in charts.drawn["loss"]:
            steps = len(CALLS[run])
            assert xs[0] == pytest.approx((1 + 10 * steps + first[run]) / 60.0)
        # the tool calls by step, side by side, and where they part
        steps = screen.timelines
        assert steps.diverged_at == 4
        assert steps.column_text(CLAUDE_1)[3] == "bash python train.py --lr 3e-4"
        assert steps.column_text(CLAUDE_2)[3] == "write_file config.yaml  (+content)"
        assert steps.column_text(CLAUDE_1)[6] == "·"
        assert "the tools part at step 4" in str(screen.query_one("#compare-steps-title").render())
        await pilot.press("d")
        assert steps.cursor_row == 3
        wide = steps.columns[ColumnKey(CLAUDE_1)].width
        await pilot.resize_terminal(100, 40)  # the run columns share the narrower width
        await until(pilot, lambda: steps.columns[ColumnKey(CLAUDE_1)].width < wide)
        assert steps.column_text(CLAUDE_2)[3] == "write_file config.yaml  (+content)"
        assert steps.cursor_row == 3 and steps.diverged_at == 4
        await pilot.press("escape")
        assert app.screen is app.dashboard


async def test_a_live_run_is_followed_as_its_events_come(tmp_path: Path) -> None:
    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        screen = await compare_marked(pilot, app, RUNNING, HELD)
        assert screen.cell(RUNNING, "status") == "running"
        assert screen.cell(RUNNING, "cost") == "$0.0173"
        assert screen.timelines.column_text(RUNNING) == [
            "bash ls -la /workspace", "write_file train.py  (+content)",
            "bash python train.py --epochs 3 --lr 3e-4"]
        assert screen.timelines.column_text(HELD) == ["bash python merge.py --method ties", "·", "·"]
        assert screen.timelines.diverged_at == 2
        assert sorted(screen.charts.names) == ["accuracy", "loss", "val_loss"]
        f = EventFactory(RUNNING, next_seq=app.fleet.last_seq(RUNNING) + 1)
        more = [f.make("agent.step", {"step": 4, "elapsed_s": 1790.0}, ts=NOW - 5),
                f.make("tool.call", {"id": "c4", "name": "bash", "args": {"command": "python eval.py"}},
                       ts=NOW - 4),
                f.make("metric", {"step": 620, "values": {"loss": 1.9}}, ts=NOW - 3),
                f.make("usage", {"model": "claude-sonnet-4-5", "input_tokens": 1000,
                                 "output_tokens": 10, "cost_usd": 0.01}, ts=NOW - 2)]
        journal = Journal(app.journal_path)  # the runner writes its journal before the bus
        journal.write_sync(more)
        journal.close()
        feed.push(*more)
        await until(pilot, lambda: len(screen.timelines.column_text(RUNNING)) == 4)
        assert screen.timelines.column_text(RUNNING)[3] == "bash python eval.py"
        await until(pilot, lambda: {run: ys for run, _, ys in screen.charts.drawn["loss"]}
                    [RUNNING][-1] == 1.9)
        await until(pilot, lambda: screen.cell(RUNNING, "cost") == "$0.0273")


async def test_c_on_a_results_row_compares_its_runs(tmp_path: Path) -> None:
    app = MLRBApp(journal_with(tmp_path, scored_events()), None, operator="ada@ops",
                  clock=lambda: NOW)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await started(pilot)
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ResultsScreen) and len(app.screen.shown) == 5)
        results = app.screen
        assert isinstance(results, ResultsScreen)
        at = [(r.task, r.agent) for r in results.shown]
        results.table.move_cursor(row=at.index(("mini_pile", "scripted")))
        await pilot.press("c")  # one run: nothing to compare, and the results stay
        assert app.screen is results
        assert any("has 1 ended run: nothing to compare" in n.message for n in app._notifications)
        results.table.move_cursor(row=at.index(("mini_pile", "anthropic")))
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded)
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        assert screen.runs == ["r-mp-claude-1", "r-mp-claude-2", "r-mp-claude-3", "r-mp-claude-4"]
        assert [screen.cell(r, "score") for r in screen.runs] == [
            "0.574 superglue", "0.512 superglue", "0.548 superglue", "—"]
        assert [screen.cell(r, "status") for r in screen.runs] == ["succeeded"] * 3 + ["failed"]
        assert {screen.cell(r, "scaffold") for r in screen.runs} == {"mlrb"}
        assert "no tool calls yet" in str(screen.query_one("#compare-steps-title").render())
        await pilot.press("escape")
        assert app.screen is results


def test_compare_snapshot_on_the_time_axis_at_the_divergence(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    scene = next(s for s in SCENES if s.name == "compare")
    assert scene.size == (120, 40)

    async def steps(pilot: Pilot[None]) -> None:
        await scene.steps(pilot)
        await pilot.press("X", "d")
        await pilot.pause(0.2)  # the charts redraw after the layout refresh
        await pilot.pause()

    app = scene_app(write_demo_journal(tmp_path / "demo-journal.db"), scene)
    assert snap_compare(app, terminal_size=scene.size, run_before=steps)
