"""The console driven through a real terminal (Textual Pilot) over the demo journal."""

from __future__ import annotations

from pathlib import Path

from mlrb_tui.app import MLRBApp
from mlrb_tui.screens.confirm_kill import KillConfirm
from mlrb_tui.screens.help import HelpScreen
from mlrb_tui.screens.run_view import RunScreen
from mlrb_tui.widgets.metric_charts import MetricCharts
from mlrb_tui.widgets.output_log import OutputLog
from mlrb_tui.widgets.scrubber import Scrubber
from mlrb_tui.widgets.timeline import ActionLog
from runner.events import EventFactory
from tests.fixtures.console_app import SIZE, Catcher, Feed, make_app, started, until
from tests.fixtures.demo_journal import HELD, KILLED, NOW, RUNNING


def cell(app: MLRBApp, run: str, col: str) -> str:
    assert app.dashboard is not None
    return app.dashboard.table.cell_text(run, col)


def order(app: MLRBApp) -> list[str]:
    assert app.dashboard is not None
    return app.dashboard.table.shown


def log_text(widget: ActionLog | OutputLog) -> str:
    if isinstance(widget, ActionLog):
        return "\n".join(widget.plain_lines())
    return "\n".join(strip.text for strip in widget.lines)


async def test_dashboard_shows_every_run(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        assert order(app) == [RUNNING, HELD, KILLED]
        assert cell(app, RUNNING, "task") == "mini_pile"
        assert cell(app, RUNNING, "agent") == "claude"
        assert cell(app, RUNNING, "status") == "▶ running"
        assert cell(app, HELD, "status") == "‖ held"
        assert cell(app, KILLED, "status") == "✘ killed"
        assert cell(app, RUNNING, "metric") == "loss=2.079@600"
        # elapsed = active_s + (now - active_ts) while running; frozen otherwise
        assert cell(app, RUNNING, "time") == "29:55/1h"
        assert cell(app, HELD, "time") == "2:07/2h"
        assert cell(app, RUNNING, "res") == "2.1/4c 5.2/16G"  # CPU and memory against limits
        assert "local" in cell(app, KILLED, "flags")
        assert "bus: none" in app.topbar_text().plain


async def test_live_events_update_cells_in_place(tmp_path: Path) -> None:
    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        table = app.dashboard.table  # type: ignore[union-attr]
        keys_before = table.shown
        rows_before = dict(table.rows)
        updates_before = table.updates
        f = EventFactory(RUNNING, next_seq=app.fleet.last_seq(RUNNING) + 1)
        feed.push(f.make("metric", {"step": 620, "values": {"loss": 1.5}}, ts=NOW),
                  f.make("resource", {"cpu_pct": 333.0, "mem_bytes": 2 * 1024**3,
                                      "mem_limit": 16 * 1024**3, "cpu_limit": 4.0}, ts=NOW))
        await until(pilot, lambda: cell(app, RUNNING, "metric") == "loss=1.5@620")
        assert cell(app, RUNNING, "res") == "3.3/4c 2.0/16G"
        assert table.shown == keys_before  # same runs, same order: nothing rebuilt
        assert all(table.rows[r] is row for r, row in rows_before.items())
        assert table.updates > updates_before
        # a re-sent event changes nothing
        n = table.updates
        feed.push(f.make("metric", {"step": 1, "values": {"loss": 9.0}}, ts=NOW))
        dup = EventFactory(RUNNING, next_seq=app.fleet.last_seq(RUNNING))
        feed.push(dup.make("metric", {"step": 1, "values": {"loss": 99.0}}, ts=NOW))
        await until(pilot, lambda: cell(app, RUNNING, "metric") == "loss=9@1")
        assert app.fleet.duplicates == 1
        assert table.updates > n
        # a new run is appended, the others stay where they were
        g = EventFactory("r-new-04")
        feed.push(g.make("run.created", {"task": "baby_lm", "agent": "scripted"}, ts=NOW))
        await until(pilot, lambda: table.row_count == 4)
        assert order(app)[:3] == [RUNNING, HELD, KILLED]


async def test_gap_is_filled_from_the_journal(tmp_path: Path) -> None:
    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        from runner.journal import Journal

        last = app.fleet.last_seq(RUNNING)
        f = EventFactory(RUNNING, next_seq=last + 1)
        evs = [f.make("metric", {"step": 700 + i, "values": {"loss": 1.0 + i}}, ts=NOW + i)
               for i in range(3)]
        journal = Journal(app.journal_path)
        journal.write_sync(evs)
        journal.close()
        feed.push(evs[2])  # the first two never arrive on the bus
        await until(pilot, lambda: app.fleet.last_seq(RUNNING) == last + 3)
        assert app.fleet.gaps == 1
        await until(pilot, lambda: cell(app, RUNNING, "metric") == "loss=3@702")


async def test_run_view_shows_actions_output_and_charts(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("enter")
        assert isinstance(app.screen, RunScreen) and app.screen.run == RUNNING
        screen = app.screen
        await until(pilot, lambda: screen.state is not None
                    and len(screen.query_one(OutputLog).lines) > 5)
        actions = log_text(screen.query_one(ActionLog))
        assert "call     bash ls -la /workspace" in actions
        assert "result   ok exit 0 1.5s  total 24 (+2 lines)" in actions
        assert "write_file train.py  (+content)" in actions
        output = log_text(screen.query_one(OutputLog))
        # the progress bar's \r redraw and the colour/title escapes are gone
        assert "epoch 1  step 600/600 done" in output
        assert "pwned-title" not in output and "\x1b" not in output
        assert "warning: grad norm 14.2 clipped to 1.0" in output
        await until(pilot, lambda: len(screen.query(".chart")) == 2)
        charts = screen.query_one(MetricCharts)
        assert charts._names == ["loss", "accuracy"]
        header = screen.query_one("#run-header").render()
        assert "sandbox: docker (isolated)" in str(header)
        await pilot.press("escape")
        assert app.screen is app.dashboard


async def test_l_on_the_dashboard_opens_the_runs_logs(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("down", "l")
        screen = app.screen
        assert isinstance(screen, RunScreen) and screen.run == HELD
        output = screen.query_one(OutputLog)
        assert screen.maximized is output and output.has_focus
        await pilot.press("escape")  # first out of the full-screen logs
        assert app.screen is screen and screen.maximized is None
        await pilot.press("l")  # in the run view `l` goes in and out of them
        assert screen.maximized is output
        await pilot.press("l")
        assert screen.maximized is None and not output.has_focus
        await pilot.press("escape")
        assert app.screen is app.dashboard


async def test_not_isolated_sandbox_warns(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        app.open_run(KILLED)
        await pilot.pause()
        await until(pilot, lambda: "NOT isolated" in str(app.screen.query_one("#run-header").render()))
        assert "local sandbox — NOT isolated" in str(app.screen.query_one("#run-header").render())


async def test_live_events_reach_the_open_run_view(tmp_path: Path) -> None:
    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, RunScreen)
        await until(pilot, lambda: screen.state is not None)
        f = EventFactory(RUNNING, next_seq=app.fleet.last_seq(RUNNING) + 1)
        feed.push(f.make("sandbox.output", {"stream": "stdout",
                                            "text": "\x1b[1mevil\x1b[0m [red]not markup[/red]\n"},
                         ts=NOW))
        await until(pilot, lambda: "evil [red]not markup[/red]" in log_text(screen.query_one(OutputLog)))


async def test_controls_send_commands_and_show_acks(tmp_path: Path) -> None:
    feed, catcher = Feed(), Catcher()
    app = make_app(tmp_path, feed=feed, send=catcher)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await started(pilot)
        await pilot.press("p")
        await until(pilot, lambda: len(catcher.commands) == 1)
        await pilot.press("f", "r")
        await until(pilot, lambda: len(catcher.commands) == 3)
        assert [(c.run, c.action, c.operator) for c in catcher.commands] == [
            (RUNNING, "hold", "ada@ops"), (RUNNING, "freeze", "ada@ops"),
            (RUNNING, "resume", "ada@ops")]
        assert all(c.reason for c in catcher.commands)
        hold = catcher.commands[0]
        f = EventFactory(RUNNING, next_seq=app.fleet.last_seq(RUNNING) + 1)
        feed.push(f.make("control.ack", {"command_id": hold.id, "action": "hold",
                                         "accepted": False, "reason": "run is already held"},
                         ts=NOW))
        await until(pilot, lambda: app.controls.acks_seen == 1)
        assert app.controls.ack_log[-1] == "hold r-mini-pile-01: refused — run is already held"
        # controls on an ended run are refused locally, nothing is sent
        await pilot.press("down", "down")
        assert app.dashboard.table.current_run == KILLED  # type: ignore[union-attr]
        await pilot.press("p")
        await pilot.pause()
        assert len(catcher.commands) == 3


async def test_kill_confirmation_names_the_run_and_cancel_sends_nothing(tmp_path: Path) -> None:
    catcher = Catcher()
    app = make_app(tmp_path, send=catcher)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("down")  # the held run
        await pilot.press("ctrl+k")
        await until(pilot, lambda: isinstance(app.screen, KillConfirm))
        question = str(app.screen.query_one("#question").render())
        assert question == f"Kill {HELD}?"
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, KillConfirm))
        await pilot.pause()
        assert catcher.commands == []
        await pilot.press("ctrl+k")
        await until(pilot, lambda: isinstance(app.screen, KillConfirm))
        await pilot.click("#reason")
        await pilot.press("ctrl+a", *"stuck merge")
        app.screen.query_one("#reason").value = "stuck merge"  # type: ignore[attr-defined]
        await pilot.click("#kill")
        await until(pilot, lambda: len(catcher.commands) == 1)
        kill = catcher.commands[0]
        assert (kill.run, kill.action, kill.reason) == (HELD, "kill", "stuck merge")


async def test_readonly_hides_controls(tmp_path: Path) -> None:
    catcher = Catcher()
    app = make_app(tmp_path, send=catcher, readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        shown = {k for k, b in app.active_bindings.items() if b.enabled}
        assert not {"p", "f", "r", "ctrl+k"} & shown
        await pilot.press("p", "f", "r", "ctrl+k")
        await pilot.pause()
        assert catcher.commands == []
        assert not isinstance(app.screen, KillConfirm)
        assert "READONLY" in app.topbar_text().plain
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        keys = dict(app.screen.keys)
        assert "Hold" not in keys.values() and "Kill" not in keys.values()


async def test_help_lists_keys_and_keymap_remaps_them(tmp_path: Path) -> None:
    catcher = Catcher()
    app = make_app(tmp_path, send=catcher, keymap={"hold": "h"})
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        keys = dict(app.screen.keys)
        assert keys["h"] == "Hold" and keys["ctrl+k"] == "Kill" and keys["/"] == "Filter"
        assert keys["enter"] == "Open" and keys["q"] == "Quit"
        assert keys["up k"] == "Up" and keys["down j"] == "Down"  # one line per action
        await pilot.press("escape")
        await pilot.press("p")
        await pilot.pause()
        assert catcher.commands == []
        await pilot.press("h")
        await until(pilot, lambda: len(catcher.commands) == 1)
        assert catcher.commands[0].action == "hold"


async def test_filter_sort_and_marks(tmp_path: Path) -> None:
    catcher = Catcher()
    app = make_app(tmp_path, send=catcher)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        table = app.dashboard.table  # type: ignore[union-attr]
        await pilot.press("slash", *"merge")
        assert order(app) == [HELD]
        await pilot.press("enter")
        await pilot.press("slash", "home", "exclamation_mark")
        assert table.filter_text == "!merge"
        assert order(app) == [RUNNING, KILLED]
        await pilot.press("enter", "escape")
        assert table.filter_text == "" and table.row_count == 3
        # sort by clicking a header: elapsed time, shortest first
        table.sort_column = "time"
        table.resort()
        assert order(app) == [HELD, KILLED, RUNNING]
        await pilot.press("O")
        assert order(app) == [RUNNING, KILLED, HELD]
        # marks: controls act on every marked run
        await pilot.press("up", "up", "space", "space")
        assert table.marked == {RUNNING, KILLED}
        await pilot.press("p")
        await until(pilot, lambda: len(catcher.commands) == 1)
        await pilot.pause()
        assert [c.run for c in catcher.commands] == [RUNNING]  # the killed one is ended


async def test_replay_plays_steps_and_seeks(tmp_path: Path) -> None:
    app = make_app(tmp_path, replay_run=RUNNING, replay_speed=1000)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        screen = app.screen
        assert isinstance(screen, RunScreen) and screen.replay is not None
        ctl = screen.replay
        await until(pilot, lambda: ctl.position > 5)  # it plays by itself
        await pilot.press("space")
        assert not ctl.playing
        await pilot.press("home")
        assert ctl.position == 1
        await pilot.press("right_square_bracket", "right_square_bracket")
        assert ctl.position == 3
        await pilot.press("left_square_bracket")
        assert ctl.position == 2
        await pilot.press("5")
        assert ctl.position == app._replay_reader.seq_at(RUNNING, ctl.t0 + (ctl.t1 - ctl.t0) / 2)  # type: ignore[union-attr]
        await pilot.pause()
        assert f"seq {ctl.position}/{ctl.max_seq}" in str(screen.query_one(Scrubber).render())
        await pilot.press("end")
        assert ctl.finished and ctl.row["status"] == "running"
        await pilot.press("minus")
        assert ctl.speed == 500
        # controls are hidden in a replay
        assert not {"p", "ctrl+k"} & {k for k, b in app.active_bindings.items() if b.enabled}
        await pilot.press("escape")
        await until(pilot, lambda: not app.is_running)


async def test_journal_poll_is_the_live_source_without_a_bus(tmp_path: Path) -> None:
    from runner.bus import BusConfig
    from runner.journal import Journal
    from tests.conftest import free_port

    path = tmp_path / "journal.db"
    from tests.fixtures.demo_journal import write_demo_journal

    write_demo_journal(path)
    app = MLRBApp(path, BusConfig(f"mqtt://127.0.0.1:{free_port()}"), operator="ada@ops",
                  clock=lambda: NOW)
    app.source.poll_s = 0.1
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await started(pilot)
        assert "bus: offline" in app.topbar_text().plain
        f = EventFactory(RUNNING, next_seq=app.fleet.last_seq(RUNNING) + 1)
        journal = Journal(path)
        journal.write_sync([f.make("metric", {"step": 900, "values": {"loss": 0.5}}, ts=NOW)])
        journal.close()
        await until(pilot, lambda: cell(app, RUNNING, "metric") == "loss=0.5@900")
        # a control with no broker to take it is reported, not raised
        await pilot.press("p")
        await until(pilot, lambda: any("hold r-mini-pile-01 not sent" in n.message
                                       for n in app._notifications))
        assert app.controls.sent == {} and app.is_running
