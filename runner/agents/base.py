"""What an agent is to the runner: something that, given what happened, decides tool calls.

Agents run on the host (an LLM agent calls its provider from here); their tool calls run
in the sandbox through `runner.tools`. The runner drives an agent turn by turn:

    await agent.start(AgentContext(...))
    while ...:
        turn = await agent.turn(Observation(step, time_left_s, results, operator_messages))
        ...run turn.calls in the sandbox, collect ToolResults for the next Observation...

An agent reports provider trouble and token usage through `AgentContext.emit` as it
happens (events `agent.error`, `usage`, `agent.message`), so the console sees a retry
storm while it is going on, not after.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    args: dict[str, Any]

    @staticmethod
    def new(name: str, args: dict[str, Any]) -> ToolCall:
        return ToolCall(id=f"call_{uuid.uuid4().hex[:12]}", name=name, args=args)


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    name: str
    ok: bool
    output: str
    exit_code: int | None = None
    duration_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    step: int
    time_left_s: float
    results: list[ToolResult] = field(default_factory=list)  # results of the last turn's calls
    operator_messages: list[str] = field(default_factory=list)  # delivered at this turn
    notices: list[str] = field(default_factory=list)  # e.g. a limit warning


@dataclass(frozen=True)
class AgentTurn:
    calls: list[ToolCall]
    text: str = ""  # what the model said this turn
    done: bool = False  # nothing more to do (no calls and no wish to continue)
    state: dict[str, Any] = field(default_factory=dict)  # the agent's record, for `resume`


@dataclass(frozen=True)
class TurnRecord:
    """One finished turn as the journal holds it: what the agent was shown, what it decided."""

    obs: Observation
    turn: AgentTurn


@dataclass
class AgentContext:
    run: str
    task_prompt: str
    tools: list[dict[str, Any]]  # JSON-schema tool specs (runner.tools.TOOL_SPECS)
    emit: Emit
    time_limit_s: float


class Agent(Protocol):
    name: str  # "scripted" | "anthropic" | "openai"
    model: str

    # An agent records its own words (agent.message), usage and provider errors through
    # ctx.emit as they happen; AgentTurn.text is for the runner's own decisions only.
    async def start(self, ctx: AgentContext) -> None: ...

    async def turn(self, obs: Observation) -> AgentTurn: ...

    async def resume(self, ctx: AgentContext, turns: list[TurnRecord]) -> None:
        """`start`, then rebuild the state these turns left, without calling the model: a
        runner that adopts a run goes on with the same conversation."""
        ...

    async def close(self) -> None: ...


class ScriptedAgent:
    """Plays a fixed plan of tool calls, one per turn: the baselines and the demo.

    It stops early when a call fails, since a baseline that cannot train has nothing left
    to do but say so.
    """

    name = "scripted"
    model = "baseline"

    def __init__(self, plan: list[dict[str, Any]]) -> None:
        self._plan = [ToolCall.new(c["name"], dict(c["args"])) for c in plan]
        self._next = 0

    async def start(self, ctx: AgentContext) -> None:
        self._emit = ctx.emit

    async def resume(self, ctx: AgentContext, turns: list[TurnRecord]) -> None:
        await self.start(ctx)
        self._next = sum(1 for t in turns if t.turn.calls)  # the plan goes on after the calls made

    async def turn(self, obs: Observation) -> AgentTurn:
        failed = [r for r in obs.results if not r.ok]
        if failed:
            text = f"step failed: {failed[0].output[-300:]}"
            await self._emit("agent.message", {"role": "assistant", "text": text})
            return AgentTurn(calls=[], text=text, done=True)
        if self._next >= len(self._plan):
            return AgentTurn(calls=[], done=True)
        call = self._plan[self._next]
        self._next += 1
        text = f"plan step {self._next}/{len(self._plan)}: {call.name}"
        await self._emit("agent.message", {"role": "assistant", "text": text})
        return AgentTurn(calls=[call], text=text)

    async def close(self) -> None:
        return None
