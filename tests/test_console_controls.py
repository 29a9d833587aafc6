"""The operator's controls without a terminal: aiming, typed commands, acks matched to them."""

from __future__ import annotations

from mlrb_tui.controls import MAX_UNANSWERED, Controls, Selection
from mlrb_tui.state import FleetState
from runner.control import LIMIT_NAMES, ApprovalModeArgs, LimitArgs, MessageArgs, NoArgs
from runner.events import TERMINAL_STATUSES, EventFactory, RunStatus

OPERATOR = "ada@ops"
LIVE, HELD, ENDED = "r-live-01", "r-held-02", "r-ended-03"


def fleet_of(**statuses: str) -> FleetState:
    fleet = FleetState()
    fleet.load_rows({"run": run, "status": status, "last_seq": 1, "task": "mini_pile",
                     "agent": "claude"} for run, status in statuses.items())
    return fleet


def controls(**statuses: str) -> Controls:
    return Controls(fleet_of(**statuses), OPERATOR)


def ack(fleet: FleetState, run: str, command_id: str, accepted: bool, reason: str = "") -> None:
    f = EventFactory(run, next_seq=fleet.last_seq(run) + 1)
    fleet.apply([f.make("control.ack", {"command_id": command_id, "action": "hold",
                                        "accepted": accepted, "reason": reason}, ts=1.0)])


def test_marked_runs_win_over_the_cursor() -> None:
    assert Selection("b", ("c", "a")).runs == ["a", "c"]
    assert Selection("b").runs == ["b"]
    assert Selection().runs == []


def test_aim_leaves_out_ended_runs_and_names_them() -> None:
    c = controls(**{LIVE: RunStatus.RUNNING, HELD: RunStatus.HELD, ENDED: RunStatus.KILLED})
    aim = c.aim(Selection(LIVE, (ENDED, HELD, LIVE)))
    assert aim.live == (HELD, LIVE)
    assert aim.ended == ((ENDED, "killed"),)
    assert [(n.text, n.severity) for n in aim.notices()] == [
        (f"{ENDED} has ended (killed)", "warning")]
    # every terminal status counts as ended; a run the console has not seen yet is live
    for status in TERMINAL_STATUSES:
        assert controls(**{ENDED: status}).aim(Selection(ENDED)).live == ()
    assert controls().aim(Selection("r-unseen-09")).live == ("r-unseen-09",)


def test_aim_at_nothing_says_so() -> None:
    aim = controls(**{LIVE: RunStatus.RUNNING}).aim(Selection())
    assert aim.live == () and aim.selected == ()
    assert [n.text for n in aim.notices()] == ["no run selected"]


def test_only_bulk_hold_and_freeze_wait_for_a_typed_confirmation() -> None:
    assert Controls.bulk_confirmed("hold", [LIVE, HELD])
    assert Controls.bulk_confirmed("freeze", (LIVE, HELD))
    assert not Controls.bulk_confirmed("hold", [LIVE])
    assert not Controls.bulk_confirmed("resume", [LIVE, HELD])


def test_commands_are_typed_and_carry_the_operator_and_a_reason() -> None:
    c = controls(**{LIVE: RunStatus.RUNNING})
    hold = c.control(LIVE, "hold")
    assert (hold.run, hold.action, hold.operator, hold.reason) == (
        LIVE, "hold", OPERATOR, "hold from the console")
    assert isinstance(hold.args, NoArgs) and not hold.invalid and hold.id
    assert c.control(LIVE, "kill", "stuck merge").reason == "stuck merge"
    msg = c.message(LIVE, "try lr 1e-4", "nudge")
    assert isinstance(msg.args, MessageArgs) and msg.args_dict() == {"text": "try lr 1e-4"}
    limit = c.limit(LIVE, LIMIT_NAMES[0], 7200, "close to converging")
    assert isinstance(limit.args, LimitArgs) and limit.args_dict() == {
        "name": LIMIT_NAMES[0], "value": 7200.0}
    assert c.score(LIVE).reason == "score requested from the console"
    assert c.approve(LIVE, "c9").args_dict() == {"call_id": "c9"}
    assert c.approve(LIVE, "c9", "edited", args={"command": "ls"}).args_dict() == {
        "call_id": "c9", "args": {"command": "ls"}}
    assert c.reject(LIVE, "c10", "no GPU queries").args_dict() == {"call_id": "c10"}
    assert c.shell(LIVE, "start").args_dict() == {"state": "start"}
    assert c.shell(LIVE, "end", 3).args_dict() == {"state": "end", "exit_code": 3}
    assert c.shell(LIVE, "end").args_dict() == {"state": "end"}


def test_approval_mode_toggles_from_what_was_seen() -> None:
    c = controls(**{LIVE: RunStatus.RUNNING})
    first = c.toggle_approval_mode(LIVE)
    assert isinstance(first.args, ApprovalModeArgs) and first.args.on
    assert first.reason == "approval mode on from the console"
    f = EventFactory(LIVE, next_seq=c.fleet.last_seq(LIVE) + 1)
    c.fleet.apply([f.make("operator.approval_mode", {"operator": OPERATOR, "on": True}, ts=1.0)])
    second = c.toggle_approval_mode(LIVE)
    assert second.args_dict() == {"on": False}
    assert second.reason == "approval mode off from the console"


def test_a_command_whose_args_fit_no_model_is_refused_and_not_remembered() -> None:
    c = controls(**{LIVE: RunStatus.RUNNING})
    too_long = c.message(LIVE, "x" * 20_001, "a long message")
    assert too_long.invalid
    refused = c.admit(too_long)
    assert refused is not None and refused.severity == "error"
    assert refused.text.startswith(f"message {LIVE} not sent: args.text")
    assert c.sent == {}
    bad_limit = c.command(LIVE, "limit", "why", name="time_s", value=-5)
    assert bad_limit.invalid and c.admit(bad_limit) is not None and c.sent == {}
    good = c.control(LIVE, "hold")
    assert c.admit(good) is None and c.sent == {good.id: good}


def test_unanswered_commands_are_forgotten_oldest_first() -> None:
    c = controls(**{LIVE: RunStatus.RUNNING})
    cmds = [c.control(LIVE, "hold") for _ in range(MAX_UNANSWERED + 1)]
    for cmd in cmds:
        c.admit(cmd)
    assert len(c.sent) == MAX_UNANSWERED
    assert cmds[0].id not in c.sent and cmds[-1].id in c.sent


def test_acks_are_matched_to_this_consoles_commands() -> None:
    c = controls(**{LIVE: RunStatus.RUNNING, HELD: RunStatus.HELD})
    hold, resume = c.control(LIVE, "hold"), c.control(HELD, "resume")
    c.admit(hold)
    c.admit(resume)
    ack(c.fleet, LIVE, hold.id, True, "held at step 12")
    ack(c.fleet, HELD, resume.id, False, "")
    ack(c.fleet, LIVE, "another-consoles-command", True)
    notices = c.answers()
    assert [(n.text, n.severity, n.title) for n in notices] == [
        (f"hold {LIVE}: accepted (held at step 12)", "information", "runner"),
        (f"resume {HELD}: refused — no reason given", "warning", "runner")]
    assert c.acks_seen == 2 and c.sent == {}
    assert list(c.ack_log) == [n.text for n in notices]
    assert not c.fleet.acks and c.answers() == []  # each ack is answered once


def test_a_command_the_bus_did_not_take_is_forgotten() -> None:
    c = controls(**{LIVE: RunStatus.RUNNING})
    hold = c.control(LIVE, "hold")
    c.admit(hold)
    assert c.handed(hold).text == f"hold sent to {LIVE}; waiting for the runner"
    notice = c.not_sent(hold, "no bus configured")
    assert (notice.text, notice.severity) == (f"hold {LIVE} not sent: no bus configured", "error")
    assert c.sent == {}
    assert c.not_sent(hold, OSError("boom"), failed=True).text == f"hold {LIVE} failed: boom"


def test_the_kill_question_says_what_the_run_is() -> None:
    c = controls(**{HELD: RunStatus.HELD})
    assert c.kill_detail(HELD) == "mini_pile · claude · held"
    assert c.kill_detail("r-unseen-09") == "? · ? · ?"
