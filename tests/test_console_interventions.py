"""Operator interventions through the console (Pilot): every control sends a ControlCommand
with an id, the operator and a reason, and the runner's ack is shown."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, TextArea

from mlrb_tui.app import MLRBApp
from mlrb_tui.screens.interventions import (
    BulkConfirm,
    EditCallDialog,
    LimitDialog,
    MessageDialog,
    RejectDialog,
)
from mlrb_tui.screens.run_view import RunScreen
from mlrb_tui.widgets.approvals import ApprovalQueue
from mlrb_tui.widgets.run_header import RunHeader
from runner.events import EventFactory
from tests.fixtures.console_app import SIZE, Catcher, Feed, make_app, started, until
from tests.fixtures.demo_journal import HELD, KILLED, NOW, OPERATOR, RUNNING


def cell(app: MLRBApp, run: str, col: str) -> str:
    assert app.dashboard is not None
    return app.dashboard.table.cell_text(run, col)


def factory(app: MLRBApp, run: str = RUNNING) -> EventFactory:
    return EventFactory(run, next_seq=app.fleet.last_seq(run) + 1)


async def test_message_score_and_approval_mode(tmp_path: Path) -> None:
    feed, catcher = Feed(), Catcher()
    app = make_app(tmp_path, feed=feed, send=catcher)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await started(pilot)
        await pilot.press("m")
        assert isinstance(app.screen, MessageDialog)
        await pilot.press("enter")  # empty: refused in the dialog
        assert isinstance(app.screen, MessageDialog)
        assert "empty" in str(app.screen.query_one("#error").render())
        await pilot.press(*"try lr 1e-4")
        await pilot.press("enter")
        await until(pilot, lambda: len(catcher.commands) == 1)
        msg = catcher.commands[0]
        assert (msg.run, msg.action, msg.args_dict(), msg.operator) == (
            RUNNING, "message", {"text": "try lr 1e-4"}, OPERATOR)
        assert msg.reason and msg.id
        await pilot.press("a")
        await until(pilot, lambda: len(catcher.commands) == 2)
        assert catcher.commands[1].action == "approval_mode"
        assert catcher.commands[1].args_dict() == {"on": True}
        f = factory(app)
        feed.push(f.make("operator.approval_mode", {"operator": OPERATOR, "on": True,
                                                    "command_id": catcher.commands[1].id}, ts=NOW),
                  f.make("control.ack", {"command_id": catcher.commands[1].id,
                                         "action": "approval_mode", "accepted": True,
                                         "reason": "approval mode on"}, ts=NOW))
        await until(pilot, lambda: app.controls.acks_seen == 1)
        assert app.controls.ack_log[-1] == "approval_mode r-mini-pile-01: accepted (approval mode on)"
        await pilot.press("a")  # now known to be on: the toggle turns it off
        await until(pilot, lambda: len(catcher.commands) == 3)
        assert catcher.commands[2].args_dict() == {"on": False}
        await pilot.press("g")
        await until(pilot, lambda: len(catcher.commands) == 4)
        assert catcher.commands[3].action == "score" and catcher.commands[3].reason


async def test_limit_dialog_validates_then_sends(tmp_path: Path) -> None:
    catcher = Catcher()
    app = make_app(tmp_path, send=catcher)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("L")
        assert isinstance(app.screen, LimitDialog)
        await pilot.press(*"-5", "enter")
        assert "positive" in str(app.screen.query_one("#error").render())
        app.screen.query_one("#value", Input).value = "7200"
        app.screen.query_one("#reason", Input).value = "close to converging"
        await pilot.click("#ok")
        await until(pilot, lambda: len(catcher.commands) == 1)
        cmd = catcher.commands[0]
        assert (cmd.action, cmd.args_dict(), cmd.reason) == (
            "limit", {"name": "time_s", "value": 7200.0}, "close to converging")


async def test_approval_queue_approve_edit_reject(tmp_path: Path) -> None:
    feed, catcher = Feed(), Catcher()
    app = make_app(tmp_path, feed=feed, send=catcher)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.state is not None)
        screen = app.screen
        assert isinstance(screen, RunScreen)
        queue = screen.query_one(ApprovalQueue)
        assert not queue.display
        f = factory(app)
        feed.push(f.make("tool.call", {"id": "c9", "name": "bash",
                                       "args": {"command": "rm -rf /workspace/data"}}, ts=NOW),
                  f.make("tool.approval", {"id": "c9", "state": "pending", "name": "bash"}, ts=NOW),
                  f.make("tool.call", {"id": "c10", "name": "bash",
                                       "args": {"command": "nvidia-smi"}}, ts=NOW),
                  f.make("tool.approval", {"id": "c10", "state": "pending", "name": "bash"}, ts=NOW))
        await until(pilot, lambda: queue.display and queue.option_count == 2)
        assert "rm -rf /workspace/data" in str(queue.get_option_at_index(0).prompt)
        assert "2 waiting for approval" in str(screen.query_one(RunHeader).render())
        # the dashboard row shows it too (checked below); edit the first call, then approve
        await pilot.press("e")
        assert isinstance(app.screen, EditCallDialog)
        area = app.screen.query_one("#args", TextArea)
        assert '"command": "rm -rf /workspace/data"' in area.text
        area.text = "{not json"
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, EditCallDialog)
        assert "not JSON" in str(app.screen.query_one("#error").render())
        area.text = '["a list"]'
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "JSON object" in str(app.screen.query_one("#error").render())
        area.text = '{"command": "rm -rf /workspace/data/tmp"}'
        await pilot.press("ctrl+s")
        await until(pilot, lambda: len(catcher.commands) == 1)
        edit = catcher.commands[0]
        assert (edit.action, edit.args_dict()) == (
            "approve", {"call_id": "c9", "args": {"command": "rm -rf /workspace/data/tmp"}})
        feed.push(f.make("tool.approval", {"id": "c9", "state": "approved", "edited": True},
                         ts=NOW))
        await until(pilot, lambda: queue.option_count == 1)
        await pilot.press("n")
        assert isinstance(app.screen, RejectDialog)
        await pilot.press("enter")  # a rejection needs a reason
        assert isinstance(app.screen, RejectDialog)
        await pilot.press(*"no GPU queries", "enter")
        await until(pilot, lambda: len(catcher.commands) == 2)
        rej = catcher.commands[1]
        assert (rej.action, rej.args_dict(), rej.reason) == ("reject", {"call_id": "c10"}, "no GPU queries")
        await pilot.press("y")
        await until(pilot, lambda: len(catcher.commands) == 3)
        assert catcher.commands[2].args_dict() == {"call_id": "c10"}
        feed.push(f.make("tool.approval", {"id": "c10", "state": "rejected"}, ts=NOW))
        await until(pilot, lambda: not queue.display)
        await pilot.press("escape")
        await pilot.pause()


async def test_shell_records_start_and_end(tmp_path: Path) -> None:
    catcher = Catcher()
    app = make_app(tmp_path, send=catcher)
    ran: list[tuple[list[str], Path | None]] = []

    def fake_terminal(argv: list[str], cwd: Path | None) -> int:
        ran.append((argv, cwd))
        return 3

    app.run_shell = fake_terminal
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("s")
        await until(pilot, lambda: len(catcher.commands) == 2)
        assert ran == [(["docker", "exec", "-it", "-u", "1000:1000", "-w", "/workspace",
                         "c0ffee12", "bash"], None)]
        assert [(c.action, c.args_dict()) for c in catcher.commands] == [
            ("shell", {"state": "start"}), ("shell", {"state": "end", "exit_code": 3})]
        # an ended run has no sandbox: nothing is sent
        await pilot.press("down", "down", "s")
        await pilot.pause()
        assert len(catcher.commands) == 2


async def test_bulk_actions_need_a_typed_confirmation(tmp_path: Path) -> None:
    catcher = Catcher()
    app = make_app(tmp_path, send=catcher)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("space", "space", "space")
        assert app.dashboard is not None and len(app.dashboard.table.marked) == 3
        await pilot.press("p")
        assert isinstance(app.screen, BulkConfirm)
        assert sorted(app.screen.runs) == sorted([RUNNING, HELD])  # the killed one is not live
        await pilot.press(*"3", "enter")
        assert isinstance(app.screen, BulkConfirm)
        assert "type 2 or hold" in str(app.screen.query_one("#error").render())
        app.screen.query_one("#typed", Input).value = "2"
        await pilot.press("enter")
        await until(pilot, lambda: len(catcher.commands) == 2)
        assert {(c.run, c.action) for c in catcher.commands} == {(RUNNING, "hold"), (HELD, "hold")}
        await pilot.press("ctrl+k")
        assert isinstance(app.screen, BulkConfirm)
        await pilot.press("escape")
        await pilot.pause()
        assert len(catcher.commands) == 2
        await pilot.press("ctrl+k", *"kill", "enter")
        await until(pilot, lambda: len(catcher.commands) == 4)
        assert {c.action for c in catcher.commands[2:]} == {"kill"}


async def test_limit_warning_flags_and_pending_show_on_the_row(tmp_path: Path) -> None:
    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        assert "⚑1" in cell(app, KILLED, "flags")
        assert cell(app, RUNNING, "gpu") == "92% 31/80G"
        assert cell(app, HELD, "gpu") == "— no GPU"
        assert cell(app, RUNNING, "res").startswith("2.1/4c ")
        assert cell(app, RUNNING, "trend").startswith("g")  # backfilled GPU history
        f = factory(app)
        feed.push(f.make("run.limit", {"limit": "time_s", "used": 2900, "max": 3600,
                                       "fraction": 0.806, "level": "warning"}, ts=NOW),
                  f.make("tool.call", {"id": "x1", "name": "bash", "args": {"command": "ls"}},
                         ts=NOW),
                  f.make("tool.approval", {"id": "x1", "state": "pending"}, ts=NOW))
        await until(pilot, lambda: "⏱time_s 81%" in cell(app, RUNNING, "flags"))
        assert "✋1" in cell(app, RUNNING, "flags")
        assert cell(app, RUNNING, "time").endswith("⚠")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.state is not None)
        await pilot.pause()
        header = str(app.screen.query_one(RunHeader).render())
        assert "time_s 81% of its limit used" in header


async def test_readonly_hides_every_intervention(tmp_path: Path) -> None:
    catcher = Catcher()
    app = make_app(tmp_path, send=catcher, readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        shown = {k for k, b in app.active_bindings.items() if b.enabled}
        assert not {"m", "a", "s", "g", "L"} & shown
        await pilot.press("m", "a", "s", "g", "L")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        await pilot.press("y", "e", "n")
        await pilot.pause()
        assert catcher.commands == []
        assert isinstance(app.screen, RunScreen)
