"""Stall alarms in a real run: a command that sleeps past the quiet threshold is journaled as a
`run.warning` with code `stalled`, once, and the console's flags show it until the run moves."""

from __future__ import annotations

import asyncio

from runner.agents.base import ScriptedAgent
from runner.event_data import RunWarningData
from runner.stall_watch import Thresholds
from runner.supervisor import RunRequest, RunSupervisor
from tests.test_supervisor import IMAGE, local, task, wait_for  # noqa: F401  (local: a fixture)


def stalled(h) -> list[RunWarningData]:
    return [e.body for e in h.events() if isinstance(e.body, RunWarningData)
            and e.body.code == "stalled"]


async def test_a_quiet_command_raises_a_stalled_warning(local):  # noqa: F811
    agent = ScriptedAgent([{"name": "bash", "args": {"command": "sleep 60", "timeout_s": 120}}])
    sup = RunSupervisor(
        RunRequest(run="tiny-1", task=task(), scale="smoke", agent_kind=agent.name),
        journal=local.journal, publish=local.published.extend, make_sandbox=local.make_sandbox,
        agent=agent, workspace=local.tmp / "tiny-1" / "workspace", runner_id="test", image=IMAGE,
        alarms=Thresholds(quiet_s=0.5, gpu_idle_s=0, llm_call_s=0))
    runner = asyncio.create_task(sup.run())
    await wait_for(lambda: stalled(local), timeout=30)
    assert sup.stalls.firing == {"stalled"}
    await sup.kill("test over")
    assert await runner == "killed"
    alarms = stalled(local)
    assert len(alarms) == 1  # once per episode, however long the command slept
    assert alarms[0].message.startswith("no event for ") and alarms[0].idle_s >= 0.5
    kinds = local.kinds()
    assert kinds.index("tool.call") < kinds.index("run.warning", kinds.index("tool.call"))


async def test_the_default_thresholds_stay_quiet_in_a_short_run(local):  # noqa: F811
    from tests.test_supervisor import plan

    sup = local.supervisor(ScriptedAgent(plan(steps=5)))
    assert await sup.run() == "succeeded", sup.end_reason
    codes = {e.body.code for e in local.events() if isinstance(e.body, RunWarningData)}
    assert codes.isdisjoint({"stalled", "gpu_idle", "llm_slow"})
