"""The run view in depth (Pilot): the timeline expands, searches and jumps; output follows or
stays; charts group series and switch axis; the audit log; replay jumps."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, Static

from mlrb_tui.screens.run_view import RunScreen
from mlrb_tui.widgets.audit_log import AuditLog
from mlrb_tui.widgets.metric_charts import MetricCharts, chart_groups
from mlrb_tui.widgets.output_log import OutputLog
from mlrb_tui.widgets.run_header import RunHeader
from mlrb_tui.widgets.timeline import ActionLog
from runner.events import EventFactory
from tests.fixtures.console_app import SIZE, Catcher, Feed, make_app, started, until
from tests.fixtures.demo_journal import HELD, KILLED, NOW, RUNNING


def test_series_of_one_quantity_share_a_chart() -> None:
    groups = chart_groups(["train/loss", "eval/loss", "val_accuracy", "accuracy", "lr"])
    assert groups == {"loss": ["train/loss", "eval/loss"],
                      "accuracy": ["val_accuracy", "accuracy"], "lr": ["lr"]}


async def open_run(pilot, app, down: int = 0) -> RunScreen:  # type: ignore[no-untyped-def]
    await started(pilot)
    for _ in range(down):
        await pilot.press("down")
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.state is not None
                and app.screen.query_one(ActionLog).option_count > 0)
    assert isinstance(app.screen, RunScreen)
    return app.screen


async def test_timeline_expands_searches_and_jumps(tmp_path: Path) -> None:
    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_run(pilot, app)
        log = screen.query_one(ActionLog)
        await pilot.press("home")
        assert log.find_next(lambda e: e.kind == "tool.call" and "write_file" in e.text)
        assert "120 lines of training code" not in "\n".join(log.plain_lines())
        await pilot.press("enter")
        assert "content: import torch" in "\n".join(log.plain_lines())
        assert "    # 120 lines of training code" in "\n".join(log.plain_lines())
        await pilot.press("enter")
        assert "content: import torch" not in "\n".join(log.plain_lines())
        await pilot.press("space")  # space expands too, outside a replay
        assert "content: import torch" in "\n".join(log.plain_lines())
        await pilot.press("home", "slash", *"python train", "enter")
        assert log.current is not None and "python train.py" in log.current.text
        await pilot.press("escape")
        assert not screen.query_one("#search", Input).display
        f = EventFactory(RUNNING, next_seq=app.fleet.last_seq(RUNNING) + 1)
        feed.push(f.make("agent.error", {"error": "rate_limited", "detail": "429"}, ts=NOW),
                  f.make("score", {"metric": "loss", "value": 2.1}, ts=NOW + 1))
        await until(pilot, lambda: any(e.kind == "score" for e in log.entries))
        await pilot.press("home", "E")
        assert log.current is not None and log.current.kind == "agent.error"
        await pilot.press("G")
        assert log.current is not None and log.current.kind == "score"


async def test_output_follow_toggle_and_chart_axis(tmp_path: Path) -> None:
    app = make_app(tmp_path, send=Catcher())
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = await open_run(pilot, app)
        out = screen.query_one(OutputLog)
        assert out.auto_scroll
        await pilot.press("t")
        assert not out.auto_scroll
        await pilot.press("t")
        assert out.auto_scroll
        charts = screen.query_one(MetricCharts)
        await until(pilot, lambda: len(screen.query(".chart")) == 2)
        await pilot.press("X")
        assert charts.x_axis == "time"
        await pilot.press("X")
        assert charts.x_axis == "step"


async def test_audit_log_lists_interventions_with_their_acks(tmp_path: Path) -> None:
    app = make_app(tmp_path, send=Catcher())
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_run(pilot, app, down=2)
        assert screen.run == KILLED
        state = screen.state
        assert state is not None
        rows = [(r["operator"], r["action"], r["reason"], r["ack"]) for r in state.audit]
        assert ("ada@ops", "resume", "", "refused: run is not paused") in rows
        assert ("ada@ops", "kill", "runaway disk use", "accepted") in rows
        await pilot.pause()
        assert screen.query_one(AuditLog).display


async def test_replay_jumps_to_the_next_intervention(tmp_path: Path) -> None:
    app = make_app(tmp_path, replay_run=HELD, replay_speed=1)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        screen = app.screen
        assert isinstance(screen, RunScreen) and screen.replay is not None
        ctl = screen.replay
        await pilot.press("home", "I")
        reader = app._replay_reader
        assert reader is not None
        hold = reader.events(HELD, 0, 1, kinds=["operator.hold"])[0]
        assert ctl.position == hold.seq and not ctl.playing
        await pilot.press("I")
        assert reader.events(HELD, ctl.position - 1, 1)[0].kind == "control.ack"
        assert ctl.row["status"] == "held"


async def test_a_run_view_not_yet_mounted_is_not_painted(tmp_path: Path) -> None:
    # the repaint timer can fire between pushing the screen and mounting its widgets
    app = make_app(tmp_path, send=Catcher())
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        screen = RunScreen(HELD)
        mounted = app.push_screen(screen)
        assert app.screen is screen and not screen.is_mounted
        screen.repaint(app.frame())  # must neither raise nor paint: there is nothing to paint yet
        assert not screen.query("#topbar") and not screen.query(RunHeader)
        await mounted
        await until(pilot, lambda: screen.is_mounted)
        screen.repaint(app.frame())  # mounted: the same call paints
        assert "MLRB Console" in str(screen.query_one("#topbar", Static).render())
        assert HELD in str(screen.query_one(RunHeader).render())
