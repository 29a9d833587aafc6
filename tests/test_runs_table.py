"""The runs table at fleet scale, through Pilot: what is drawn, cursor keys, mouse, sorting."""

from __future__ import annotations

from pathlib import Path

from textual.pilot import Pilot

from mlrb_tui.app import MLRBApp
from mlrb_tui.screens.run_view import RunScreen
from mlrb_tui.widgets.runs_table import HEADER, WIDTHS, RunsTable
from runner.events import EventFactory
from tests.fixtures.console_app import SIZE, Catcher, Feed, make_app, started, until
from tests.fixtures.demo_journal import NOW

FLEET = 200


def fleet_app(tmp_path: Path) -> tuple[MLRBApp, Feed, list[EventFactory]]:
    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    factories = [EventFactory(f"fleet-{i:03d}") for i in range(FLEET)]
    return app, feed, factories


async def fleet_started(app: MLRBApp, feed: Feed, factories: list[EventFactory],
                        pilot: Pilot[None]) -> RunsTable:
    await started(pilot)
    feed.push(*(f.make("run.created", {"task": "mini_pile", "agent": "scripted",
                                        "limits": {"time_s": 3600}}, ts=NOW - 600)
                for f in factories))
    feed.push(*(f.make("run.started", {"elapsed_s": 0.0}, ts=NOW - 600) for f in factories))
    assert app.dashboard is not None
    table = app.dashboard.table
    await until(pilot, lambda: table.row_count == FLEET + 3)
    await pilot.pause()
    return table


def line_text(table: RunsTable, run: str) -> str:
    """What the screen shows on the run's line (it must be in view)."""
    y = table.row_index(run) - round(table.scroll_y) + HEADER
    assert HEADER <= y < table.size.height
    return table.render_line(y).text


async def test_only_changed_lines_in_view_are_drawn(tmp_path: Path) -> None:
    app, feed, factories = fleet_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        table = await fleet_started(app, feed, factories, pilot)
        visible = table.size.height - HEADER
        assert visible < FLEET  # most of the fleet is off screen
        on_screen, off_screen = factories[5], factories[190]
        rendered = table.lines_rendered
        feed.push(on_screen.make("metric", {"step": 9, "values": {"loss": 0.125}}, ts=NOW))
        await until(pilot, lambda: "loss=0.125@9" in line_text(table, on_screen.run))
        await pilot.pause()
        assert table.lines_rendered == rendered + 1  # that line and no other

        feed.push(off_screen.make("metric", {"step": 7, "values": {"loss": 0.5}}, ts=NOW))
        await until(pilot, lambda: app.fleet.rows[off_screen.run].get("metric_value") == 0.5)
        await pilot.pause(0.3)  # a few repaints: nothing off screen is drawn
        assert table.lines_rendered == rendered + 1
        assert table.rows[off_screen.run].stale

        await pilot.press("end")  # scroll it into view: it is drawn with the new value
        await pilot.pause()
        assert table.cursor_row == FLEET + 2
        assert "loss=0.5@7" in line_text(table, off_screen.run)
        assert not table.rows[off_screen.run].stale


async def test_cursor_keys_move_and_keep_the_cursor_in_view(tmp_path: Path) -> None:
    app, feed, factories = fleet_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        table = await fleet_started(app, feed, factories, pilot)
        page = table.size.height - HEADER - 1
        await pilot.press("j", "j", "down")
        assert table.cursor_row == 3
        await pilot.press("k")
        assert table.cursor_row == 2
        await pilot.press("pagedown")
        assert table.cursor_row == 2 + page
        await pilot.press("end")
        assert table.cursor_row == table.row_count - 1
        assert round(table.scroll_y) == table.row_count - (table.size.height - HEADER)
        await pilot.press("up")
        assert table.current_run == table.shown[-2]
        await pilot.press("pageup", "home")
        assert table.cursor_row == 0 and round(table.scroll_y) == 0
        await pilot.press("up")  # nothing above the first run
        assert table.cursor_row == 0


async def test_mouse_sorts_by_header_and_opens_a_run(tmp_path: Path) -> None:
    app, feed, factories = fleet_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        table = await fleet_started(app, feed, factories, pilot)
        for i, f in enumerate(factories[:3]):
            feed.push(f.make("metric", {"step": 1, "values": {"loss": 0.01 * (i + 1)}}, ts=NOW))
        await until(pilot, lambda: app.fleet.rows[factories[2].run].get("metric_value") == 0.03)
        await pilot.pause()
        # the metric header starts after run, task, agent, status and time (each + a gap)
        x = sum(WIDTHS[:5]) + 2
        await pilot.click("#runs", offset=(x, 0))
        assert (table.sort_column, table.sort_reverse) == ("metric", False)
        assert table.shown[:3] == [f.run for f in factories[:3]]
        assert "metric▲" in table.render_line(0).text
        await pilot.click("#runs", offset=(x, 0))
        # highest first; the demo's three runs have higher values; runs with none stay last
        assert table.sort_reverse and table.shown[3:6] == [f.run for f in factories[2::-1]]
        assert table.shown[-1] == factories[-1].run
        # a new value moves its run, and the cursor stays on the run it was on
        await pilot.press("home", "down", "down", "down")
        kept = table.current_run
        assert kept == factories[2].run
        feed.push(factories[9].make("metric", {"step": 2, "values": {"loss": 0.001}}, ts=NOW))
        await until(pilot, lambda: table.shown[6] == factories[9].run)
        feed.push(factories[2].make("metric", {"step": 2, "values": {"loss": 0.0001}}, ts=NOW))
        await until(pilot, lambda: table.shown[6] == factories[2].run)
        assert table.current_run == kept and table.cursor_row == 6
        # a click moves the cursor; a click on the cursor's row opens the run
        await pilot.click("#runs", offset=(3, HEADER + 4))
        assert table.cursor_row == 4
        run = table.current_run
        await pilot.click("#runs", offset=(3, HEADER + 4))
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        assert isinstance(app.screen, RunScreen) and app.screen.run == run


async def test_filter_and_sort_together_keep_the_header_on_top(tmp_path: Path) -> None:
    app, feed, factories = fleet_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        table = await fleet_started(app, feed, factories, pilot)
        await pilot.press("end")  # scrolled down: the header is still the first line
        assert round(table.scroll_y) > 0
        table.sort_by("metric", True)
        await pilot.pause()
        assert table.render_line(0).text.startswith("run ")
        assert "metric▼" in table.render_line(0).text
        for i, f in enumerate(factories[:12]):
            feed.push(f.make("metric", {"step": 1, "values": {"loss": 100.0 + i}}, ts=NOW))
        await until(pilot, lambda: table.shown[0] == factories[11].run)
        await pilot.press("slash", *"fleet-00")  # ten runs left, still in metric order
        await until(pilot, lambda: table.row_count == 10)
        assert table.shown == [f.run for f in factories[9::-1]]
        assert round(table.scroll_y) == 0 and table.cursor_row < 10
        # a value that moves a run while others are filtered away
        feed.push(factories[0].make("metric", {"step": 2, "values": {"loss": 999.0}}, ts=NOW),
                  factories[50].make("metric", {"step": 2, "values": {"loss": 998.0}}, ts=NOW))
        await until(pilot, lambda: table.shown[0] == factories[0].run)
        assert table.row_count == 10 and factories[50].run not in table.shown
        await pilot.press("escape")
        await until(pilot, lambda: table.row_count == FLEET + 3)
        assert table.shown[:2] == [factories[0].run, factories[50].run]


async def test_a_narrow_terminal_scrolls_sideways_with_the_run_column_fixed(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot)
        assert app.dashboard is not None
        table = app.dashboard.table
        line = table.render_line(HEADER).text
        # the columns that matter most stay in view; the task (in the run id too) gives way
        assert line.startswith("r-mini-pile-01   ▶ running") and "flags" in table.render_line(0).text
        assert "mini_pile" not in line and "tok/$" not in table.render_line(0).text
        for _ in range(200):  # as far right as it goes
            await pilot.press("right")
        await pilot.pause()
        assert round(table.scroll_x) > 0
        header, line = table.render_line(0).text, table.render_line(HEADER).text
        assert header.startswith("run ") and header.rstrip().endswith("tok/$")
        assert line.startswith("r-mini-pile-01 ") and "mini_pile" not in line
        assert "4.5k $0.02" in line
        # a click on a scrolled header sorts by the column drawn there
        x = header.index("score")
        await pilot.click("#runs", offset=(x + 1, 0))
        assert table.sort_column == "score"
        await pilot.click("#runs", offset=(2, 0))  # the fixed run column
        assert table.sort_column == "run"
