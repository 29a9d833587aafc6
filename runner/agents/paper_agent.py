"""The paper's scaffold (`mlrb-paper`): the agent the MLRB authors ran
(AlgorithmicResearchGroup/ML-Research-Agent), behind this project's agent interface.

Its loop, as upstream's:
- **Planner.** First, one call asks for a plan (the `plan_generator` tool, forced), given
  the task. The plan is a list of steps, shown to the worker at every step.
- **Worker.** Then each step is one single-turn call: a system prompt and one user prompt
  holding the goal, the time spent and left, the plan, the last `MEMORY_ROWS` memory rows
  (tool, status, attempt, output, errors), and the previous attempt and its output. There is
  no conversation history: what the agent knows of its past is the memory.
- The first tool call of a reply runs; a reply without one is a thought, remembered as such.
  `return_fn` ends the run with its answer.
- Calls go out at temperature 0 with max_tokens 1024. Extended thinking (Anthropic) takes no
  temperature and counts against max_tokens, so its budget comes on top of the 1024; an
  OpenAI reasoning model takes neither temperature nor max_tokens, and its hidden reasoning
  gets `REASONING_ALLOWANCE` tokens on top of the 1024.

Retries, streaming, usage, prices and cache lifetimes are the project's (`LLMAgent`); the
tools and the system prompt are a stable prefix, cached with Anthropic.
Everything the loop keeps (plan, memory, the call awaiting its result) is rebuilt from the
journal's turns by `resume`, without a call to the model.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any

from runner.agents.anthropic_agent import AnthropicAgent, cache_control
from runner.agents.base import (
    AgentContext,
    AgentTurn,
    Observation,
    ToolCall,
    ToolResult,
    TurnRecord,
)
from runner.agents.errors import ProviderError
from runner.agents.llm_agent import Completion, LLMAgent, choose_ttl
from runner.agents.openai_agent import OpenAIAgent
from runner.paper_tools import ALL_ARGS, INTERNET_ARGS
from runner.sandbox import WORKSPACE
from runner.tools import validate

MAX_TOKENS = 1024
TEMPERATURE = 0
REASONING_ALLOWANCE = 16_384  # an OpenAI reasoning model's hidden reasoning counts against the cap
MEMORY_ROWS = 5
ROW_CHARS = 3000  # of a memory row's output or errors, its end kept
PREVIOUS_CHARS = 12_000  # of the previous step's output, its end kept
PLAN_TOOL = "plan_generator"
PLAN_SPEC = {"name": PLAN_TOOL, "description": "Generate a plan for an AI agent, given a task.",
             "parameters": {"type": "object", "required": ["plan"], "properties": {
                 "plan": {"type": "array", "description": "the plan's steps, in order",
                          "items": {"type": "string"}}}}}
STARTING = "You are starting the task"


def planner_prompt(tools: list[str]) -> str:
    return f"""You plan the work of an AI research agent that carries out a machine-learning \
task on its own. Key points:

1. Base the plan on the task description below.
2. Every step must be doable with the agent's tools: {', '.join(tools)}.
3. Make the steps concrete and actionable: name the models, datasets and libraries to use.
4. Have the agent track its progress and findings with the scratchpad tool.
5. Only plan; do not carry out the task.
6. PyTorch, torchvision, torchaudio, pandas and numpy are installed.
7. Say which tools each step uses.

Give the plan with the `{PLAN_TOOL}` tool.

The task description:
"""


def worker_system(tools: list[str], internet: bool) -> str:
    net = ("install more with run_bash" if internet else
           "the sandbox has no network, so nothing else can be installed or downloaded")
    return f"""You are a highly capable machine-learning researcher working as an autonomous \
agent. Complete the goal you are given efficiently and well. Key points:

1. Use your tools: {', '.join(tools)}.
2. Prefer writing and running code to solve problems.
3. Track your progress and findings with the scratchpad tool.
4. Record your reasoning with the thought tool.
5. PyTorch, torchvision, torchaudio, pandas and numpy are installed; {net}.
6. Your working directory is {WORKSPACE}; every command and file belongs in it.
7. Save your model in the working directory before you use return_fn.
8. Work through the plan's steps in order, or combine them to reach the goal.
9. Use return_fn only when you are sure the task is done and you have a metric to report.

Remember: work around errors and make assumptions where needed; act on a plan as soon as \
it is made; try something new when an approach keeps failing; the working directory \
persists from step to step."""


@dataclass(frozen=True)
class MemoryRow:
    """One step as the agent remembers it (upstream's memory table, per run)."""

    tool: str
    status: str
    attempt: str
    stdout: str
    stderr: str

    def text(self) -> str:
        return (f"tool: {self.tool}\nstatus: {self.status}\nattempt: {_clip(self.attempt, ROW_CHARS)}\n"
                f"stdout: {_clip(self.stdout, ROW_CHARS)}\nstderr: {_clip(self.stderr, ROW_CHARS)}")


FIRST = MemoryRow(tool=STARTING, status="This is your first attempt", attempt=STARTING,
                  stdout=STARTING, stderr=STARTING)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else f"[... {len(text) - n} characters cut]\n" + text[-n:]


def attempt_of(call: ToolCall) -> str:
    """What the step tried, in words the next prompt shows."""
    if call.name == "run_bash":
        return str(call.args.get("script", ""))
    if call.name == "run_python":
        return f"run_python {call.args.get('filepath', '')}"
    return f"{call.name} {json.dumps(call.args, ensure_ascii=False)}"


def row_of(call: ToolCall, result: ToolResult | None) -> MemoryRow:
    if result is None:
        return MemoryRow(call.name, "failure", attempt_of(call), "", "[no result: the call was not run]")
    stderr = "" if result.ok else (f"exit code {result.exit_code}" if result.exit_code is not None
                                   else "the tool reported a failure")
    return MemoryRow(call.name, "success" if result.ok else "failure", attempt_of(call),
                     result.output, stderr)


def thought_row(text: str) -> MemoryRow:
    return MemoryRow("thought", "You had a thought", f"You had the thought: {text}",
                     "You must now use a tool to complete the task", "None")


def plan_steps(c: Completion) -> list[str]:
    """The plan's steps from the planner's reply: its plan_generator call (a list of steps,
    or of plans each with its own steps), else the lines of its text."""
    for call in c.calls:
        if call.name != PLAN_TOOL or not isinstance(call.args, dict):
            continue
        steps: list[str] = []
        for item in call.args.get("plan") or call.args.get("plans") or []:
            if isinstance(item, dict) and isinstance(item.get("plan"), list):
                steps.extend(str(s) for s in item["plan"])
            elif isinstance(item, dict) and "Subtask" in item:
                steps.append(str(item["Subtask"]))
            else:
                steps.append(item if isinstance(item, str) else json.dumps(item))
        if steps:
            return steps
    return [line.strip() for line in c.text.splitlines() if line.strip()]


class PaperScaffold(LLMAgent):
    """The planner/worker loop over a provider agent's calls (`request` is the provider's)."""

    scaffold = "mlrb-paper"

    async def start(self, ctx: AgentContext) -> None:
        self._ctx = ctx
        names = [t["name"] for t in ctx.tools]
        self.internet = any(n in INTERNET_ARGS for n in names)
        self.tools = self._tool_specs(ctx.tools)
        self._tool_names = set(names)
        self.task_prompt = ctx.task_prompt
        self.system = worker_system(names, self.internet)
        self.planner_system = planner_prompt(names)
        self.plan: list[str] | None = None
        self.memory: deque[MemoryRow] = deque(maxlen=MEMORY_ROWS)
        self.previous = FIRST
        self.memory.append(FIRST)
        self.pending: ToolCall | None = None  # the call whose result the next observation holds
        self.prompt = ""
        self._planning = False

    # -- the loop -------------------------------------------------------------------------
    async def turn(self, obs: Observation) -> AgentTurn:
        if self._ctx is None:
            raise RuntimeError("start() must be called before turn()")
        self._absorb(obs)
        now = self.clock()
        self._waited(now, obs)
        self.cache_ttl = choose_ttl(now, self._last_long_wait)
        state: dict[str, Any] = {"at": now, "ttl": self.cache_ttl, "usage": []}
        if self.plan is None:
            planned = await self._ask(obs.step, planning=True)
            if isinstance(planned, ProviderError):
                return self._failed(planned, state)
            await self._account(planned)
            state["usage"].append(_usage(planned))
            self.plan = plan_steps(planned)
            state["plan"] = self.plan
            if planned.text:
                await self._emit("agent.message", {"role": "assistant", "text": planned.text,
                                                   "step": obs.step})
            await self._emit("agent.message", {"role": "assistant", "step": obs.step,
                                               "text": "Plan:\n" + self._plan_text()})
        self.prompt = self.worker_prompt(obs)
        done = await self._ask(obs.step, planning=False)
        if isinstance(done, ProviderError):
            return self._failed(done, state)
        self.consecutive_failures = 0
        await self._account(done)
        state["usage"].append(_usage(done))
        if done.text:
            await self._emit("agent.message", {"role": "assistant", "text": done.text, "step": obs.step})
        calls, _ = await self._check_calls(done.calls[:1])  # upstream runs a reply's first call
        turn = AgentTurn(calls=calls, text=done.text, state=state)
        self._keep(turn)
        return turn

    async def resume(self, ctx: AgentContext, turns: list[TurnRecord]) -> None:
        """Rebuild plan, memory and totals from the journal's turns, as `turn` built them."""
        await self.start(ctx)
        for rec in turns:
            st = rec.turn.state
            self._absorb(rec.obs)
            at = st.get("at")
            if isinstance(at, (int, float)):
                self._waited(float(at), rec.obs)
            self.cache_ttl = "1h" if st.get("ttl") == "1h" else "5m"
            for u in st.get("usage") or []:
                used = [int(x) for x in u] + [0, 0, 0, 0]
                self._count(used[0], used[1], used[2], used[3])
            plan = st.get("plan")
            if isinstance(plan, list):
                self.plan = [str(s) for s in plan]
            if st.get("failed"):
                self.consecutive_failures += 1
                continue
            self.consecutive_failures = 0
            self._keep(rec.turn)

    def _failed(self, err: ProviderError, state: dict[str, Any]) -> AgentTurn:
        self.consecutive_failures += 1
        return AgentTurn(calls=[], done=False, state={**state, "failed": True}, text=(
            f"[LLM call failed: {err.kind}; {self.consecutive_failures} turn(s) in a row] "
            f"{self._scrub(err.detail)[:500]}"))

    def _keep(self, turn: AgentTurn) -> None:
        """The reply's call awaits its result; a reply without one is remembered as a thought."""
        if turn.calls:
            self.pending = turn.calls[0]
        elif turn.text:
            self._remember(thought_row(turn.text))

    def _absorb(self, obs: Observation) -> None:
        """Fold what happened since the last call into the memory."""
        by_id = {r.call_id: r for r in obs.results}
        if self.pending is not None:
            self._remember(row_of(self.pending, by_id.pop(self.pending.id, None)))
            self.pending = None
        for r in by_id.values():  # results of calls the model did not make (an operator's)
            self._remember(MemoryRow(r.name, "success" if r.ok else "failure",
                                     f"[Runner notice] {r.name} ({r.call_id})", r.output, ""))
        for n in obs.notices:
            self._remember(MemoryRow("runner notice", "", "[Runner notice]", n, ""))
        for m in obs.operator_messages:
            self._remember(MemoryRow("operator message", "", "[Message from the human operator]", m, ""))

    def _remember(self, row: MemoryRow) -> None:
        self.memory.append(row)
        self.previous = row

    def _plan_text(self) -> str:
        return "\n".join(self.plan or [])

    def worker_prompt(self, obs: Observation) -> str:
        assert self._ctx is not None
        spent = max(self._ctx.time_limit_s - obs.time_left_s, 0.0) / 60
        left = max(obs.time_left_s, 0.0) / 60
        rows = "\n".join(f"Step {i}\n{row.text()}\n{'-' * 40}" for i, row in enumerate(self.memory, 1))
        p = self.previous
        return f"""Your goal is: {self.task_prompt}
Your working directory is: {WORKSPACE}
Time spent: {spent:.2f} minutes. Remaining: {left:.2f} minutes.

Plan outline:
{self._plan_text()}

Your last {len(self.memory)} steps:
{rows}

Previous attempt:
{_clip(p.attempt, PREVIOUS_CHARS)}

Previous output:
{_clip(p.stdout, PREVIOUS_CHARS)}

Additional output: {_clip(p.stderr, ROW_CHARS)}

Instructions:
- Record what matters with the scratchpad tool.
- Record your reasoning with the thought tool.
- Once you have trained a model, report the final metric from its evaluation.
- Use return_fn only when the goal is met, after saving the model in the working directory.
- Weigh the compute you have and the time left.
Think about what you have done and what is left. Prefer writing and running code. Take no \
unneeded steps. When you have trained a model, submit it with return_fn."""

    async def _ask(self, step: int, *, planning: bool) -> Completion | ProviderError:
        self._planning = planning
        try:
            return await self._call_with_retries(step)
        finally:
            self._planning = False

    def _validate(self, call: ToolCall) -> None:
        validate(call, ALL_ARGS)


def _usage(c: Completion) -> list[int]:
    return [c.input_tokens, c.output_tokens, c.cache_write_tokens, c.cache_read_tokens]


class PaperAnthropicAgent(PaperScaffold, AnthropicAgent):
    """The paper's scaffold on Claude (the Messages API)."""

    def __init__(self, model: str, *, thinking_budget: int | None = None, **opts: Any) -> None:
        opts.pop("max_tokens", None)  # the scaffold's own: 1024, plus thinking when asked
        opts.pop("context_window", None)  # single-turn prompts: no history to fit
        super().__init__(model, max_tokens=MAX_TOKENS + (thinking_budget or 0),
                         thinking_budget=thinking_budget, **opts)

    def request(self) -> dict[str, Any]:
        system, prompt = ((self.planner_system, self.task_prompt) if self._planning
                          else (self.system, self.prompt))
        tools: list[dict[str, Any]] = (self._tool_specs([PLAN_SPEC]) if self._planning
                                       else list(self.tools))
        sys_field: str | list[dict[str, Any]] = system
        if self.cache and not self._planning:  # the worker's tools and system prompt never change
            ttl = cache_control(self.cache_ttl)
            sys_field = [{"type": "text", "text": system, "cache_control": ttl}]
            tools = [*tools[:-1], {**tools[-1], "cache_control": ttl}]
        req: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "system": sys_field,
                               "messages": [{"role": "user", "content": prompt}], "tools": tools}
        if self.thinking_budget is not None:
            # the API takes no temperature and no forced tool with thinking on
            req["thinking"] = {"type": "enabled", "budget_tokens": self.thinking_budget}
        else:
            # the SDK has no temperature parameter any more; the Messages API still reads it
            req["extra_body"] = {"temperature": TEMPERATURE}
            if self._planning:
                req["tool_choice"] = {"type": "tool", "name": PLAN_TOOL}
        return req


class PaperOpenAIAgent(PaperScaffold, OpenAIAgent):
    """The paper's scaffold on GPT (Chat Completions)."""

    def __init__(self, model: str, **opts: Any) -> None:
        opts.pop("max_tokens", None)
        opts.pop("context_window", None)
        super().__init__(model, max_tokens=MAX_TOKENS, **opts)
        if self._reasoning:
            self.max_tokens = MAX_TOKENS + REASONING_ALLOWANCE

    def request(self) -> dict[str, Any]:
        system, prompt = ((self.planner_system, self.task_prompt) if self._planning
                          else (self.system, self.prompt))
        tools = self._tool_specs([PLAN_SPEC]) if self._planning else self.tools
        role = "developer" if self._reasoning else "system"
        req: dict[str, Any] = {"model": self.model, "tools": tools, "messages": [
            {"role": role, "content": system}, {"role": "user", "content": prompt}]}
        if self._planning:
            req["tool_choice"] = {"type": "function", "function": {"name": PLAN_TOOL}}
        if self._reasoning:  # reasoning models refuse a temperature and max_tokens
            req["max_completion_tokens"] = self.max_tokens
            if self.reasoning_effort is not None:
                req["reasoning_effort"] = self.reasoning_effort
        else:
            req["max_tokens"] = self.max_tokens
            req["temperature"] = TEMPERATURE
        return req


__all__ = ["MAX_TOKENS", "MEMORY_ROWS", "PLAN_TOOL", "TEMPERATURE", "MemoryRow",
           "PaperAnthropicAgent", "PaperOpenAIAgent", "PaperScaffold"]
