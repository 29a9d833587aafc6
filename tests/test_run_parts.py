"""The run supervisor's parts on their own: sandbox output as events, the budget's limit
checks, pause and approvals, and the control table (refusals and handlers)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from runner.agents.base import ScriptedAgent
from runner.approvals import Approvals, Decision
from runner.budget import WARN_FRACTION, Budget, RunClock, RunLimits
from runner.control import ACTION_ARGS, ACTIONS, ControlCommand, InvalidArgs
from runner.event_data import UsageData
from runner.events import Event
from runner.journal import Journal, JournalReader
from runner.pause import Pause
from runner.sandbox import SandboxSpec
from runner.sandbox_output import MAX_EVENT_TEXT, MAX_PARTIAL_LINE, OUTPUT_CHUNK, SandboxOutput
from runner.supervisor import RunRequest, RunSupervisor
from tasks.api import load_spec_file

FIXTURE = Path(__file__).parent / "fixtures" / "tasks" / "tiny_train" / "task.toml"
TRAINER_LINE = "{'loss': 0.5, 'learning_rate': 1e-05, 'epoch': 0.5}"


class Recorder:
    """Collects what a part emits and the work it spawns."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.spawned: list[asyncio.Future[Any]] = []

    async def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))

    def spawn(self, coro: Any) -> None:
        self.spawned.append(asyncio.get_running_loop().create_task(coro))

    async def settle(self) -> None:
        await asyncio.gather(*self.spawned)
        self.spawned.clear()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for k, d in self.events if k == kind]


def output(tmp_path: Path) -> tuple[SandboxOutput, Recorder]:
    rec = Recorder()
    return SandboxOutput(tmp_path, rec.emit, rec.spawn), rec


# -- sandbox output ----------------------------------------------------------------------
async def test_a_metrics_batch_read_when_the_follower_is_cancelled_is_still_emitted(tmp_path):
    import json
    import threading

    from runner.sandbox import METRICS_FILE

    out, rec = output(tmp_path)
    path = tmp_path / METRICS_FILE
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps({"step": i, "values": {"loss": 1 / i}}) + "\n" for i in range(1, 11)))
    tail = out._metrics_tail()
    reading, release = threading.Event(), threading.Event()
    real_read = tail.read

    def slow_read(*a: Any, **kw: Any) -> list[dict[str, Any]]:
        lines = real_read(*a, **kw)  # the offset has moved past these lines
        reading.set()
        release.wait(10)
        return lines

    tail.read = slow_read  # type: ignore[method-assign]
    follower = asyncio.create_task(out.follow_metrics())
    await asyncio.to_thread(reading.wait, 10)
    follower.cancel()  # the run ends while the follower is mid-read
    with pytest.raises(asyncio.CancelledError):
        await follower
    release.set()
    await out.read_last_metrics()
    assert [d["step"] for d in rec.of("metric")] == list(range(1, 11))  # each once, none lost


def test_output_pieces_merge_by_stream_in_order(tmp_path):
    out, rec = output(tmp_path)
    for stream, text in [("stdout", "a"), ("stdout", "b"), ("stderr", "c"), ("stdout", "d")]:
        out.add(stream, text)
    assert out.take_chunks() == [("stdout", "ab"), ("stderr", "c"), ("stdout", "d")]
    assert out.take_chunks() == []  # taken once
    assert rec.spawned == []  # nothing was big enough to flush early


async def test_output_chunks_are_bounded(tmp_path):
    out, rec = output(tmp_path)
    piece = "x" * 1000
    for _ in range(40):
        out.add("stdout", piece)
    chunks = out.take_chunks()
    assert len(chunks) > 1
    assert all(len(text) < OUTPUT_CHUNK + len(piece) for _, text in chunks)
    assert "".join(text for _, text in chunks) == piece * 40  # nothing lost on the way
    assert rec.spawned  # early flushes were started; they find the buffer already taken
    await rec.settle()
    assert rec.of("sandbox.output") == []


async def test_a_full_buffer_flushes_without_waiting_and_an_event_is_clipped(tmp_path):
    out, rec = output(tmp_path)
    out.add("stderr", "y" * (MAX_EVENT_TEXT + 5))
    assert len(rec.spawned) == 1  # the flush started at once
    await rec.settle()
    assert [(d["stream"], len(d["text"])) for d in rec.of("sandbox.output")] == [
        ("stderr", MAX_EVENT_TEXT)]


async def test_output_is_stripped_of_escapes(tmp_path):
    out, rec = output(tmp_path)
    out.add("stdout", "\x1b[31mred\x1b[0m\n")
    out.add("stdout", "\x1b[0m")  # nothing left once stripped
    await out.flush()
    assert rec.of("sandbox.output") == [{"stream": "stdout", "text": "red\n"}]


async def test_a_trainer_log_line_becomes_a_metric(tmp_path):
    out, rec = output(tmp_path)
    out.add("stdout", "epoch done\n" + TRAINER_LINE[:20])
    out.add("stdout", TRAINER_LINE[20:] + "\n")  # the line arrives in two pieces
    out.add("stdout", "{'loss': 0.25, 'step': 7}\n")
    out.add("stdout", "{'loss': 0.125}\n")
    await rec.settle()
    assert rec.of("metric") == [
        {"step": 1, "values": {"loss": 0.5, "learning_rate": 1e-05, "epoch": 0.5},
         "source": "stdout"},
        {"step": 7, "values": {"loss": 0.25}, "source": "stdout"},
        {"step": 8, "values": {"loss": 0.125}, "source": "stdout"},  # counts on from the last
    ]


async def test_an_unended_line_is_kept_bounded(tmp_path):
    out, rec = output(tmp_path)
    out.add("stdout", "z" * (3 * MAX_PARTIAL_LINE))
    out.add("stdout", TRAINER_LINE + "\n")  # joined to the long line: not a log dict
    await rec.settle()
    assert len(out._line) == 0 and rec.of("metric") == []
    out.add("stdout", "z" * (3 * MAX_PARTIAL_LINE))
    assert len(out._line) == MAX_PARTIAL_LINE


# -- budget ------------------------------------------------------------------------------
def test_a_limit_warns_once_at_80_percent_and_ends_at_100():
    budget = Budget(RunLimits(time_s=3600, steps=10))
    budget.steps = 7
    assert budget.check() == []
    budget.steps = 8
    [warning] = budget.check()
    assert (warning.name, warning.level, warning.reached) == ("steps", "warning", False)
    assert warning.data == {"limit": "steps", "used": 8.0, "max": 10, "fraction": WARN_FRACTION,
                            "level": "warning"}
    assert warning.notice == "Warning: you have used 80% of your steps limit."
    budget.steps = 9
    assert budget.check() == []  # warned once
    budget.steps = 10
    [reached] = budget.check()
    assert reached.reached and reached.data["level"] == "reached" and reached.data["fraction"] == 1.0
    assert reached.reason == "steps limit reached (10 of 10)"


def test_usage_counts_against_tokens_and_cost_and_a_reached_limit_comes_last():
    budget = Budget(RunLimits(time_s=3600, tokens=100, cost_usd=1.0))
    budget.count_usage(UsageData(input_tokens=60, output_tokens=25, cost_usd=0.5))
    budget.count_usage(UsageData(cost_usd=0.6))  # no input tokens reported
    crossings = budget.check()
    assert [(c.name, c.level) for c in crossings] == [("tokens", "warning"), ("cost_usd", "reached")]
    assert crossings[-1].reason == "cost_usd limit reached (1.1 of 1)"


def test_a_raised_limit_warns_again():
    budget = Budget(RunLimits(time_s=3600, steps=10))
    budget.steps = 9
    assert [c.level for c in budget.check()] == ["warning"]
    budget.set_limit("steps", 11.0)
    assert budget.limits.steps == 11 and isinstance(budget.limits.steps, int)
    assert [c.level for c in budget.check()] == ["warning"]


def test_time_runs_out_only_on_the_clock():
    budget = Budget(RunLimits(time_s=5))
    budget.clock.used = 4.0
    assert budget.time_ran_out() is None
    assert [c.level for c in budget.check()] == ["warning"]
    budget.clock.used = 5.0
    out = budget.time_ran_out()
    assert out is not None and out.reason == "time_s limit reached (5 s)"
    assert out.data == {"limit": "time_s", "used": 5.0, "max": 5, "fraction": 1.0, "level": "reached"}


def test_the_clock_stops_for_every_reason_until_all_are_released():
    clock = RunClock()
    clock.start()
    assert clock.since is not None
    clock.stop("hold")
    clock.stop("scoring")
    frozen = clock.elapsed
    clock.release("hold")
    assert clock.since is None and clock.elapsed == frozen  # scoring still stops it
    clock.release("scoring")
    assert clock.since is not None


# -- pause and approvals -----------------------------------------------------------------
async def test_a_hold_stops_the_agent_at_the_gate_and_the_clock_until_resumed():
    clock = RunClock()
    clock.start()
    pause = Pause(clock)
    await pause.gate()  # not held: passes
    pause.hold()
    gate = asyncio.ensure_future(pause.gate())
    await asyncio.sleep(0)
    assert not gate.done() and clock.since is None
    await pause.resume(None)
    await asyncio.wait_for(gate, 5)
    assert pause.level is None and clock.since is not None


async def test_approvals_wait_for_a_decision_and_turning_the_mode_off_lets_calls_run():
    approvals = Approvals(on=True)
    first = asyncio.ensure_future(approvals.wait("c1"))
    second = asyncio.ensure_future(approvals.wait("c2"))
    await asyncio.sleep(0)
    assert "c1" in approvals and "c2" in approvals and "c3" not in approvals
    approvals.decide("c1", Decision(True, {"command": "ls"}, "safer"))
    assert await first == Decision(True, {"command": "ls"}, "safer")
    approvals.set_mode(False)
    assert await second == Decision(ok=True) and not approvals.on
    assert "c1" not in approvals and "c2" not in approvals


async def test_a_decision_made_as_soon_as_the_call_is_announced_is_kept():
    approvals = Approvals(on=True)
    approvals.expect("c1")  # before the pending approval is journaled and published
    assert "c1" in approvals
    approvals.decide("c1", Decision(False, reason="not that"))  # the operator answers at once
    assert await approvals.wait("c1") == Decision(False, reason="not that")
    assert "c1" not in approvals


# -- the control table -------------------------------------------------------------------
class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.journal = Journal(tmp / "j.db")
        self.published: list[Event] = []

    def make_sandbox(self, spec: SandboxSpec):
        from runner.sandbox_factory import create_sandbox

        return create_sandbox(spec, backend="local")

    def supervisor(self, run: str = "parts-1") -> RunSupervisor:
        """A supervisor not started: commands meet a run that has no sandbox yet."""
        return RunSupervisor(
            RunRequest(run=run, task=load_spec_file(FIXTURE), scale="smoke", agent_kind="scripted",
                       limits=RunLimits(time_s=300, steps=4)),
            journal=self.journal, publish=self.published.extend, make_sandbox=self.make_sandbox,
            agent=ScriptedAgent([]), workspace=self.tmp / run / "workspace", runner_id="test")

    def events(self, run: str = "parts-1") -> list[Event]:
        reader = JournalReader(self.tmp / "j.db")
        try:
            return reader.events(run, 0, 100000)
        finally:
            reader.close()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.journal.close()


def command(action: str, run: str = "parts-1", **args: Any) -> ControlCommand:
    return ControlCommand(run=run, action=action, operator="tester@host", reason=f"test {action}",
                          args=args)


def test_the_control_table_has_a_route_for_every_action_with_its_args_model(rig):
    table = rig.supervisor().controls.table
    assert set(table) == ACTIONS
    assert {action: route.model for action, route in table.items()} == ACTION_ARGS


async def test_args_that_fit_no_model_are_refused_with_why(rig):
    sup = rig.supervisor()
    cmd = command("limit", name="bogus", value=3)
    assert isinstance(cmd.args, InvalidArgs) and cmd.invalid.startswith("args.name")
    await sup.control(cmd)
    [ack] = [e.data for e in rig.events() if e.kind == "control.ack"]
    assert ack == {"command_id": cmd.id, "action": "limit", "accepted": False,
                   "reason": cmd.invalid, "operator": "tester@host"}
    assert "operator.limit" not in [e.kind for e in rig.events()]  # never applied
    assert sup.limits.steps == 4


async def test_commands_the_run_cannot_take_now_are_refused_with_why(rig):
    sup = rig.supervisor()
    for cmd in (command("freeze"), command("resume"), command("approve", call_id="nope"),
                command("reject", call_id="nope")):
        await sup.control(cmd)
    acks = [e.data for e in rig.events() if e.kind == "control.ack"]
    assert [(a["action"], a["accepted"], a["reason"]) for a in acks] == [
        ("freeze", False, "run has no sandbox yet"),
        ("resume", False, "run is not paused"),
        ("approve", False, "no tool call is waiting for approval with that id"),
        ("reject", False, "no tool call is waiting for approval with that id")]
    assert not [e for e in rig.events() if e.kind.startswith("operator.")]


async def test_accepted_commands_reach_their_handler_with_typed_args(rig):
    sup = rig.supervisor()
    await sup.control(command("hold"))
    await sup.control(command("hold"))
    await sup.control(command("message", text="\x1b[1mtry a smaller learning rate"))
    await sup.control(command("limit", name="steps", value=9))
    await sup.control(command("approval_mode", on=True))
    await sup.control(command("shell", state="end", exit_code=0))
    await sup.control(command("resume"))
    evs = rig.events()
    acks = [(e.data["action"], e.data["accepted"], e.data["reason"]) for e in evs
            if e.kind == "control.ack"]
    assert acks == [("hold", True, "the agent stops at its next step"),
                    ("hold", False, "run is already hold"),
                    ("message", True, "delivered at the agent's next turn"),
                    ("limit", True, "steps limit is now 9"),
                    ("approval_mode", True, "approval mode on"),
                    ("shell", True, "shell end"),
                    ("resume", True, "resumed")]
    assert sup._messages == ["try a smaller learning rate"]
    assert sup.limits.steps == 9 and sup.approvals.on and sup.status == "running"
    operator = {e.kind: e.data for e in evs if e.kind.startswith("operator.")}
    assert operator["operator.limit"] == {**operator["operator.limit"], "name": "steps", "value": 9}
    assert operator["operator.shell"]["exit_code"] == 0
    assert [e.data["level"] for e in evs if e.kind == "run.held"] == ["hold"]
    assert "run.resumed" in [e.kind for e in evs]


async def test_an_ended_run_refuses_every_command(rig):
    sup = rig.supervisor()
    await sup.kill("done here")
    assert sup.ended and sup.end_status == "killed" and sup.end_reason == "done here"
    await sup.control(command("score"))
    ack = [e.data for e in rig.events() if e.kind == "control.ack"][-1]
    assert (ack["accepted"], ack["reason"]) == (False, "run has ended (killed)")
