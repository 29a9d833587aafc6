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
