"""The dashboard and campaigns, through Pilot: the campaign column, its filter, grouping by it."""

from __future__ import annotations

from pathlib import Path

from mlrb_tui.widgets.runs_table import HEADER
from runner.events import EventFactory
from tests.fixtures.console_app import SIZE, Catcher, Feed, make_app, started, until
from tests.fixtures.demo_journal import NOW


async def test_campaign_runs_bring_a_campaign_column_a_filter_and_grouping(tmp_path: Path) -> None:
    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        table = app.dashboard.table  # type: ignore[union-attr]
        assert "campaign" not in table.render_line(0).text  # no campaign yet: no column
        demo = list(table.shown)
        # alternate between two campaigns, so that creation order interleaves them
        runs = [EventFactory(f"camp-{i}") for i in range(4)]
        for i, f in enumerate(runs):
            name = "alpha" if i % 2 == 0 else "beta"
            feed.push(f.make("run.created", {"task": "mini_pile", "agent": "scripted", "campaign": name,
                                             "slot": f"mini_pile/scripted/{i // 2 + 1}", "scaffold": "mlrb"},
                             ts=NOW - 100 + i))
        await until(pilot, lambda: table.row_count == len(demo) + 4)
        await pilot.pause()
        assert "campaign" in table.render_line(0).text
        assert table.cell_text("camp-1", "campaign") == "beta"
        assert table.cell_text(demo[0], "campaign") == "—"
        y = table.row_index("camp-0") - round(table.scroll_y) + HEADER
        assert "alpha" in table.render_line(y).text  # the column is on screen, after agent

        table.set_filter("campaign:alpha")
        assert table.shown == ["camp-0", "camp-2"]
        table.set_filter("beta")
        assert table.shown == ["camp-1", "camp-3"]
        table.set_filter("!campaign:beta")
        assert table.shown == [*demo, "camp-0", "camp-2"]
        table.set_filter("")

        table.sort_by("campaign", False)  # grouped: each campaign's runs together, in order
        assert table.shown == ["camp-0", "camp-2", "camp-1", "camp-3", *demo]
        assert "campaign▲" in table.render_line(0).text


async def test_the_results_screen_shows_the_table_and_enter_shows_a_rows_runs(tmp_path: Path) -> None:
    from mlrb_tui.screens.results import ResultsScreen

    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        table = app.dashboard.table  # type: ignore[union-attr]
        scores = {"res-0": 0.5, "res-1": 0.7, "res-2": 0.2}
        for i, (run, score) in enumerate(scores.items()):
            f = EventFactory(run)
            model = "claude-3-5-sonnet-20240620" if i < 2 else "gpt-4o"
            feed.push(f.make("run.created", {"task": "mini_pile", "agent": "anthropic" if i < 2 else "openai",
                                             "model": model, "scaffold": "mlrb", "campaign": "paper"},
                             ts=NOW - 50 + i),
                      f.make("score", {"metric": "superglue", "value": score, "final": True}, ts=NOW - 10),
                      f.make("run.ended", {"status": "succeeded", "reason": "submitted"}, ts=NOW - 10))
        await until(pilot, lambda: all(app.fleet.rows.get(r, {}).get("status") == "succeeded" for r in scores))
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ResultsScreen))
        screen = app.screen
        assert isinstance(screen, ResultsScreen)
        await until(pilot, lambda: any(r.task == "mini_pile" and r.agent == "anthropic" for r in screen.shown))
        row = next(r for r in screen.shown if r.task == "mini_pile" and r.agent == "anthropic")
        assert (row.runs, row.succeeded, round(row.mean or 0, 6), row.best, row.paper) == (2, 2, 0.6, 0.7, 0.541)
        cells = screen.table.get_row(row_key_of(row))
        assert "0.600 ± 0.141" in cells and "0.541" in cells
        screen.table.move_cursor(row=[r.agent for r in screen.shown].index("anthropic"))
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is app.dashboard)
        assert table.filter_text == "task:mini_pile agent:anthropic model:claude-3-5-sonnet-20240620 scaffold:mlrb"
        assert sorted(table.shown) == ["res-0", "res-1"]


def row_key_of(row):  # the results table keys a row by task, agent, model and scaffold
    from mlrb_tui.screens.results import row_key

    return row_key(row)
