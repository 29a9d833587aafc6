"""The results screen's chart, through Pilot: it follows the highlighted row's task, marks each
run's score and the paper's figure on one axis, says how the scores were computed, says so when
there is nothing to chart, and Enter on a row still opens that row's runs."""

from __future__ import annotations

from pathlib import Path

from mlrb_tui.screens.results import ResultsScreen
from mlrb_tui.widgets.results_chart import PAPER, RUN, chart_text
from runner.journal import RunFold
from runner.results import results
from tests.fixtures.console_app import SIZE, Catcher, Feed, make_app, started, until
from tests.fixtures.demo_journal import scored_events


def test_the_chart_puts_runs_and_the_paper_on_one_axis_in_order() -> None:
    fold = RunFold()  # the runs rows the journal and the console fold from these events
    for ev in scored_events():
        fold.apply(ev)
    rows = list(fold.rows.values())
    table = results(rows)
    claude = next(r for r in table if r.task == "mini_pile" and r.agent == "anthropic")
    for width in (78, 198):
        lines = chart_text("mini_pile", table, claude, width).plain.splitlines()
        line = next(x for x in lines if x.lstrip().startswith("anthropic"))
        assert len(line) <= width
        track = line[line.index(" ", 2) + 1:]
        dots = [i for i, ch in enumerate(track) if ch == RUN]
        assert len(dots) == 3 and track.index(PAPER) in range(dots[0], dots[1])  # 0.512 < 0.541 < 0.548
        assert "0.545±0.031 paper 0.541 1✗" in line  # three scored, one failed without a score
        gpt = next(x for x in lines if x.lstrip().startswith("openai"))
        assert gpt.index(RUN) < gpt.index(PAPER)  # 0.431 below the paper's 0.457
        assert not any("paper, no runs here" in x for x in lines)  # both paper models have runs
        assert any(x.startswith(" scored by: lm-eval 0.4.8") for x in lines)
    edge = chart_text("edge_llm_compression", table, None, 78).plain
    assert "No scored runs yet." in edge and "paper, no runs here: claude-3.5-sonnet 0.551 (best)" in edge
    baby = chart_text("baby_lm", results([r for r in rows if r["task"] == "baby_lm"]), None, 78).plain
    assert "paper —" in baby  # the paper reports no figure for baby_lm
    assert "No ended runs yet" in chart_text(None, [], None, 78).plain


async def test_the_chart_follows_the_highlighted_row_and_enter_opens_its_runs(tmp_path: Path) -> None:
    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ResultsScreen))
        screen = app.screen
        assert isinstance(screen, ResultsScreen)
        await until(pilot, lambda: screen.chart.shown_task is not None)  # the demo's killed run
        assert screen.chart.shown_task == "edge_llm_compression"
        assert "No scored runs yet" in str(screen.chart.render())
        await pilot.press("escape")
        feed.push(*scored_events())
        await until(pilot, lambda: sum(r.get("status") in ("succeeded", "failed")
                                       for r in app.fleet.rows.values()) == 9)
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen is not screen)
        screen = app.screen
        assert isinstance(screen, ResultsScreen)
        await until(pilot, lambda: len(screen.shown) == 5)
        tasks = [r.task for r in screen.shown]
        screen.table.move_cursor(row=tasks.index("baby_lm"))
        await until(pilot, lambda: screen.chart.shown_task == "baby_lm")
        assert "0.627±0.023 paper —" in str(screen.chart.render())
        gpt = [(r.task, r.agent) for r in screen.shown].index(("mini_pile", "openai"))
        await pilot.press(*["down"] * (gpt - tasks.index("baby_lm")))
        await until(pilot, lambda: screen.chart.shown_task == "mini_pile")
        drawn = str(screen.chart.render())
        assert "0.431 paper 0.457 1✗" in drawn and "batch size 8" in drawn
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is app.dashboard)
        table = app.dashboard.table  # type: ignore[union-attr]
        assert table.filter_text == "task:mini_pile agent:openai model:gpt-4o-2024-08-06 scaffold:mlrb"
        assert sorted(table.shown) == ["r-mp-gpt-1", "r-mp-gpt-2"]
