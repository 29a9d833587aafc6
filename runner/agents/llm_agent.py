"""What the Anthropic and OpenAI agents share: the turn loop, retries, tool-call checks,
usage accounting and history trimming. A provider subclass only renders the history into
its wire format, makes one call, and reads the reply back (`_complete`).

Each turn: the observation (tool results, operator messages, notices, the time left) is
added to the history; the history is trimmed if it nears the context window; the model is
called, with our own retries so that each attempt is an `agent.error` event the console
sees as it happens (the SDKs' own retries are off). When retries run out the turn returns
no calls and an error text instead of raising, and `consecutive_failures` counts up so the
supervisor can decide to end the run.

Replies stream by default: text, reasoning and tool-call arguments go out as `agent.delta`
events as they arrive (`Deltas` coalesces them to one per ~100 ms), and a stream cut before
the reply ends is a transient error, retried like any other. Each call asks the provider to
cache the prompt's prefix for a lifetime (`cache_ttl`) chosen from how long the agent has
been waiting between calls: MLRB's turns often wait out a training command for longer than
a 5-minute cache lives.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from runner.agents import pricing
from runner.agents.base import AgentContext, AgentTurn, Emit, Observation, ToolCall, TurnRecord
from runner.agents.errors import AgentConfigError, ProviderError, classify
from runner.agents.history import (
    DEFAULT_TOKENS_PER_CHAR,
    CallRecord,
    Exchange,
    History,
    ResultRecord,
    TrimReport,
    estimate_tokens,
    history_chars,
    trim,
)
from runner.escapes import strip_escapes
from runner.tools import ToolArgsError, validate

SCAFFOLD = """You are an autonomous machine-learning research agent working on a task from \
the ML Research Benchmark. You work alone inside a sandboxed Linux machine (working \
directory /workspace) with the tools provided; nothing you run touches any other machine.

How to work:
- Act through tool calls. Plan briefly, then write code, run it, read the results, improve.
- Long jobs (training) should run with a timeout and print progress; check outputs.
- Save your final model with save_pretrained in a folder and call `submit` with that \
folder and a short summary. The run ends at submit, so submit only when you are done.
- You have a fixed time budget; the time left is stated at every step. Submit something \
before the time runs out: a run without a submission scores nothing.
- Text marked "[Message from the human operator]" comes from the person overseeing this \
run; follow it. Text marked "[Runner notice]" comes from the harness.

The task:
"""

OPENING = ("Begin working on the task. Use the tools to explore /workspace, write and run "
           "code, and submit your model when you are done.")
NUDGE = ("You did not call a tool. Continue working with the tools; call `submit` when your "
         "model is saved and you are done.")
MAX_IDLE_TURNS = 3  # replies without a tool call in a row before the agent says it is done
MAX_ID_LEN = 64
DELTA_INTERVAL_S = 0.1  # at most one agent.delta per part this often
MAX_DELTA_CHARS = 2000
# A wait longer than this outlives a 5-minute cache entry (with room for the call itself).
LONG_WAIT_S = 270.0
# After a long wait, the next one is likely within this long (training runs come in series).
LONG_WAIT_MEMORY_S = 2 * 3600.0
Ttl = Literal["5m", "1h"]


def was_long(wait_s: float | None, obs: Observation) -> bool:
    """Whether the agent just waited longer than a 5-minute cache entry lives: between two
    calls, or on a tool (a training command)."""
    return (wait_s is not None and wait_s > LONG_WAIT_S) or any(
        r.duration_s > LONG_WAIT_S for r in obs.results)


def choose_ttl(now: float, last_long_wait: float | None) -> Ttl:
    """The cache lifetime to ask for: an hour while the run's last long wait is recent, else
    5 minutes. A cache missed after a long wait costs a write of the whole prefix (1.25x
    input) where an hour's entry is read at 0.1x; an hour's write costs 0.75x input more
    than a 5-minute one, on the new tokens of each call only."""
    if last_long_wait is not None and now - last_long_wait <= LONG_WAIT_MEMORY_S:
        return "1h"
    return "5m"


class StreamCut(ConnectionError):
    """The provider's stream ended before the reply did."""


class Deltas:
    """The reply as it streams in, as `agent.delta` events: a piece goes out at once when
    none went out in the last `interval_s`, else with the next piece after it (or at the end),
    so the first token shows at once and a fast stream costs ~10 events a second."""

    def __init__(self, emit: Emit, step: int, attempt: int, *, scrub: Callable[[str], str],
                 interval_s: float = DELTA_INTERVAL_S) -> None:
        self._emit = emit
        self._step, self._attempt = step, attempt
        self._scrub = scrub
        self._interval = interval_s
        self._key: tuple[str, str | None] = ("text", None)
        self._buf: list[str] = []
        self._chars = 0
        self._last = -1e18
        self.sent = 0  # events emitted

    async def add(self, part: str, text: str, tool: str | None = None) -> None:
        if not text:
            return
        if (part, tool) != self._key and self._buf:
            await self.flush()
        self._key = (part, tool)
        self._buf.append(text)
        self._chars += len(text)
        if self._chars >= MAX_DELTA_CHARS or time.monotonic() - self._last >= self._interval:
            await self.flush()

    async def flush(self) -> None:
        if not self._buf:
            return
        text, (part, tool) = "".join(self._buf), self._key
        self._buf, self._chars, self._last = [], 0, time.monotonic()
        for i in range(0, len(text), MAX_DELTA_CHARS):
            data: dict[str, Any] = {"step": self._step, "part": part,
                                    "text": self._scrub(text[i:i + MAX_DELTA_CHARS]),
                                    "attempt": self._attempt}
            if tool is not None:
                data["tool"] = tool[:200]
            await self._emit("agent.delta", data)
            self.sent += 1


def time_left_text(seconds: float) -> str:
    """The scaffold's line, stated at every step."""
    total_min = max(int(seconds // 60), 0)
    return f"You have {total_min // 60} hours {total_min % 60} minutes left."


@dataclass
class RawCall:
    """A tool call as the provider returned it, before any checks."""

    id: Any
    name: Any
    wire_args: dict[str, Any] | str  # what goes back on the wire in the history
    args: Any  # the decoded arguments (None when they did not decode)
    error: str = ""  # why the arguments did not decode


@dataclass
class Completion:
    text: str
    calls: list[RawCall]
    input_tokens: int  # every prompt token, cached or not
    output_tokens: int
    stop_reason: str
    request_chars: int  # size of the request's prompt, to calibrate the token estimate
    extra: dict[str, Any] = field(default_factory=dict)
    cache_write_tokens: int = 0  # of input_tokens
    cache_read_tokens: int = 0  # of input_tokens
    thinking: list[dict[str, Any]] = field(default_factory=list)  # reasoning blocks, as sent


def parse_args(raw: str) -> tuple[Any, str]:
    """(the decoded arguments, why they did not decode) of a call's raw JSON text."""
    try:
        return (json.loads(raw) if raw.strip() else {}), ""
    except json.JSONDecodeError as exc:
        return None, f"arguments are not valid JSON ({exc.msg} at char {exc.pos})"


def resolve_key(api_key: str | None, env: str, client: Any) -> str | None:
    """The key passed in, else the provider's environment variable; a clear error if none."""
    if client is not None:
        return api_key
    key = api_key or os.environ.get(env) or None
    if not key:
        raise AgentConfigError(f"{env} is not set (pass api_key= or set the environment variable)")
    return key


class LLMAgent:
    name = "llm"
    provider = "llm"

    def __init__(self, model: str, *, api_key: str | None, max_tokens: int = 4096,
                 context_window: int | None = None, max_retries: int = 4,
                 timeout_s: float = 600, backoff_s: float = 2.0, max_backoff_s: float = 60.0,
                 max_retry_after_s: float = 300.0, stream: bool = True, cache: bool = True) -> None:
        if max_tokens < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise AgentConfigError("max_tokens >= 1, max_retries >= 0, timeout_s > 0, backoff_s >= 0")
        self.stream = stream
        self.cache = cache
        self.clock: Callable[[], float] = time.time  # wall time: the waits outlive a runner
        self._last_call_at: float | None = None
        self._last_long_wait: float | None = None  # wall time a long wait last ended
        self.cache_ttl: Ttl = "5m"  # the lifetime this turn's call asks for
        self._deltas: Deltas | None = None
        self._warned_unpriced = False
        self.model = model
        self.max_tokens = max_tokens
        self.context_window = context_window or pricing.context_window(model)
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.consecutive_failures = 0
        self.totals = {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0,
                       "cache_write_tokens": 0, "cache_read_tokens": 0}
        self._secrets = [api_key] if api_key else []
        self._tokens_per_char = DEFAULT_TOKENS_PER_CHAR
        self._idle = 0
        self._forced_trims = 0  # this turn's trims after the provider said "too long"
        self._ctx: AgentContext | None = None
        self.system = ""
        self.history = History(opening=OPENING)

    # -- provider hooks -------------------------------------------------------------------

    def _tool_specs(self, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def _complete(self) -> Completion:
        """One call to the provider with the current system prompt, tools and history; a
        streaming call sends what arrives to `self._deltas`."""
        raise NotImplementedError

    def _overhead_chars(self) -> int:
        return len(self.system) + len(json.dumps(self.tools))

    # -- the Agent protocol ---------------------------------------------------------------

    async def start(self, ctx: AgentContext) -> None:
        self._ctx = ctx
        self.system = SCAFFOLD + ctx.task_prompt
        self.tools = self._tool_specs(ctx.tools)
        self._tool_names = {t["name"] for t in ctx.tools}
        self.history = History(opening=OPENING)

    async def turn(self, obs: Observation) -> AgentTurn:
        if self._ctx is None:
            raise RuntimeError("start() must be called before turn()")
        self._absorb(obs)
        now = self.clock()
        self._waited(now, obs)
        self.cache_ttl = choose_ttl(now, self._last_long_wait)
        state: dict[str, Any] = {"tpc": self._tokens_per_char, "at": now, "ttl": self.cache_ttl}
        await self._trim(force=False)
        self._forced_trims = 0
        completion = await self._call_with_retries(obs.step)
        state["forced"] = self._forced_trims
        if isinstance(completion, ProviderError):
            self.consecutive_failures += 1
            return AgentTurn(calls=[], done=False, state={**state, "failed": True}, text=(
                f"[LLM call failed: {completion.kind}; {self.consecutive_failures} turn(s) in a "
                f"row] {self._scrub(completion.detail)[:500]}"))
        self.consecutive_failures = 0
        await self._account(completion)
        state["tpc_after"] = self._tokens_per_char
        state["usage"] = [completion.input_tokens, completion.output_tokens,
                          completion.cache_write_tokens, completion.cache_read_tokens]
        if completion.thinking:
            state["thinking"] = completion.thinking
        if completion.text:
            await self._emit("agent.message", {"role": "assistant", "text": completion.text,
                                               "step": obs.step})
        calls, records = await self._check_calls(completion.calls)
        state["wire"] = [r.wire_args for r in records]
        return self._took(AgentTurn(calls=calls, text=completion.text, state=state), records,
                          completion.thinking)

    def _took(self, turn: AgentTurn, records: list[CallRecord],
              thinking: list[dict[str, Any]] | None = None) -> AgentTurn:
        """The model's reply goes into the history; a reply without calls is nudged."""
        self.history.exchanges.append(Exchange(text=turn.text, calls=records,
                                               thinking=list(thinking or [])))
        if turn.calls:
            self._idle = 0
            return turn
        self._idle += 1
        if self._idle < MAX_IDLE_TURNS:
            self.history.trailer().notes.append(NUDGE)
        return replace(turn, done=self._idle >= MAX_IDLE_TURNS)

    async def resume(self, ctx: AgentContext, turns: list[TurnRecord]) -> None:
        """Rebuild the conversation from the journal's turns, as `turn` built it, with no call
        to the model: the same observations absorbed, the same trims at the same points, the
        same replies recorded with the calls as they went on the wire."""
        await self.start(ctx)
        for rec in turns:
            st = rec.turn.state
            self._absorb(rec.obs)
            at = st.get("at")
            if isinstance(at, (int, float)):
                self._waited(float(at), rec.obs)
            ttl = st.get("ttl")
            self.cache_ttl = "1h" if ttl == "1h" else "5m"
            self._tokens_per_char = float(st.get("tpc", self._tokens_per_char))
            self._trim_now(force=False)
            for _ in range(int(st.get("forced", 0))):
                self._trim_now(force=True)
            if st.get("failed"):
                self.consecutive_failures += 1
                continue
            self.consecutive_failures = 0
            self._tokens_per_char = float(st.get("tpc_after", self._tokens_per_char))
            used = [int(u) for u in (st.get("usage") or [])] + [0, 0, 0, 0]
            self._count(used[0], used[1], used[2], used[3])
            self._warned_unpriced = pricing.lookup(self.model) is None  # the journal has the warning
            wire = list(st.get("wire") or [])
            records = [CallRecord(id=c.id, name=c.name,
                                  wire_args=wire[i] if i < len(wire) else dict(c.args))
                       for i, c in enumerate(rec.turn.calls)]
            thinking = [b for b in st.get("thinking") or [] if isinstance(b, dict)]
            self._took(rec.turn, records, thinking)

    async def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            await client.close()

    # -- pieces ---------------------------------------------------------------------------

    def _waited(self, now: float, obs: Observation) -> None:
        """A call is about to be made at `now`: note how long the agent waited for it."""
        wait = now - self._last_call_at if self._last_call_at is not None else None
        if was_long(wait, obs):
            self._last_long_wait = now
        self._last_call_at = now

    def _absorb(self, obs: Observation) -> None:
        """Put the observation into the history as the user side of the newest exchange."""
        if self.history.exchanges and self.history.exchanges[-1].results is None:
            newest = self.history.exchanges[-1]
            by_id = {r.call_id: r for r in obs.results}
            results = []
            for c in newest.calls:
                r = by_id.pop(c.id, None)
                if r is None:
                    results.append(ResultRecord(c.id, c.name, False, "[no result: the call was not run]"))
                else:
                    results.append(ResultRecord(c.id, c.name, r.ok, r.output))
            newest.results = results
            strays = list(by_id.values())
        else:
            strays = list(obs.results)
        trailer = self.history.trailer()
        for r in strays:  # results for calls the model did not make this turn (e.g. operator exec)
            trailer.notes.append(f"[Runner notice] result of {r.name} ({r.call_id}):\n{r.output}")
        for n in obs.notices:
            trailer.notes.append(f"[Runner notice] {n}")
        for m in obs.operator_messages:
            trailer.notes.append(f"[Message from the human operator]\n{m}")
        trailer.time_left = time_left_text(obs.time_left_s)

    async def _trim(self, *, force: bool) -> None:
        report = self._trim_now(force=force)
        if report.changed:
            # An agent may emit only agent.* and usage events; a system-role message
            # shows the trim in the transcript where the operator reads the conversation.
            await self._emit("agent.message", {
                "role": "system", "code": "history_trimmed",
                "elided": report.elided, "dropped": report.dropped, "truncated": report.truncated,
                "text": (f"[conversation trimmed from ~{report.before_tokens} to "
                         f"~{report.after_tokens} tokens: {report.elided} outputs elided, "
                         f"{report.dropped} steps dropped, {report.truncated} outputs cut]")})

    def _trim_now(self, *, force: bool) -> TrimReport:
        budget = max(self.context_window - self.max_tokens, 1024)
        if force:  # the provider said "too long": our estimate is off, so cut from what we sent
            now = estimate_tokens(history_chars(self.history) + self._overhead_chars(),
                                  self._tokens_per_char)
            budget = min(budget, now)
        return trim(self.history, budget_tokens=budget, overhead_chars=self._overhead_chars(),
                    tokens_per_char=self._tokens_per_char, force=force)

    async def _call_with_retries(self, step: int) -> Completion | ProviderError:
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            assert self._ctx is not None
            self._deltas = Deltas(self._ctx.emit, step, attempt, scrub=self._scrub)
            try:
                completion = await self._complete()
                await self._deltas.flush()
            except Exception as exc:  # noqa: BLE001 - every provider failure is an event, not a crash
                err = classify(exc)
            else:
                completion.extra["latency_s"] = round(time.monotonic() - started, 3)
                return completion
            finally:
                self._deltas = None
            retrying = err.retryable and attempt <= self.max_retries
            await self._emit("agent.error", {
                "error": err.kind, "detail": self._scrub(err.detail)[:2000], "attempt": attempt,
                "retrying": retrying, "status": err.status, "step": step,
                "retry_after_s": err.retry_after_s})
            if not retrying:
                return err
            if err.kind == "context_length":
                self._forced_trims += 1
                await self._trim(force=True)
                continue
            await asyncio.sleep(self._delay(attempt, err))

    def _delay(self, attempt: int, err: ProviderError) -> float:
        if err.retry_after_s is not None:
            return min(err.retry_after_s, self.max_retry_after_s)
        base = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
        return base * random.uniform(0.5, 1.0)  # jitter: many runs share one rate limit

    def _count(self, input_tokens: int, output_tokens: int, cache_write: int,
               cache_read: int) -> float | None:
        """Add one call's usage to the totals; its cost (None without a price)."""
        cost, _ = pricing.cost_usd(self.model, input_tokens, output_tokens, cache_read=cache_read,
                                   cache_write=cache_write, ttl=self.cache_ttl)
        self.totals["calls"] += 1
        self.totals["input_tokens"] += input_tokens
        self.totals["output_tokens"] += output_tokens
        self.totals["cache_write_tokens"] += cache_write
        self.totals["cache_read_tokens"] += cache_read
        self.totals["cost_usd"] = round(self.totals["cost_usd"] + (cost or 0.0), 8)
        return cost

    async def _account(self, c: Completion) -> None:
        cost = self._count(c.input_tokens, c.output_tokens, c.cache_write_tokens,
                           c.cache_read_tokens)
        if c.input_tokens > 0 and c.request_chars > 0:
            self._tokens_per_char = min(max(c.input_tokens / c.request_chars, 0.05), 1.0)
        await self._emit("usage", {
            "model": self.model, "provider": self.provider, "input_tokens": c.input_tokens,
            "output_tokens": c.output_tokens, "cost_usd": cost, "priced": cost is not None,
            "latency_s": c.extra.get("latency_s", 0.0), "stop_reason": c.stop_reason,
            "cache_write_tokens": c.cache_write_tokens, "cache_read_tokens": c.cache_read_tokens,
            "cache_ttl": self.cache_ttl if self.cache and self.provider == "anthropic" else None})
        if cost is None and not self._warned_unpriced:
            self._warned_unpriced = True  # once a run: every usage event says priced: false
            await self._emit("agent.error", {
                "error": "unpriced_model", "retrying": False,
                "detail": (f"model {self.model!r} is not in the price table (prices of "
                           f"{pricing.PRICES_AS_OF}): its usage is recorded with cost null, and "
                           "a cost limit does not count it")})

    async def _check_calls(self, raw: list[RawCall]) -> tuple[list[ToolCall], list[CallRecord]]:
        """Turn the provider's calls into ToolCalls; a bad one carries its problem in its
        arguments, so the tool layer answers it with an error the model sees."""
        calls: list[ToolCall] = []
        records: list[CallRecord] = []
        seen: set[str] = set()
        for rc in raw:
            cid = rc.id if isinstance(rc.id, str) and 0 < len(rc.id) <= MAX_ID_LEN else ""
            if not cid or cid in seen:
                cid = f"call_{uuid.uuid4().hex[:12]}"
            seen.add(cid)
            name = rc.name if isinstance(rc.name, str) and rc.name else "unnamed"
            problem = ""
            if rc.error or not isinstance(rc.args, dict):
                raw_text = rc.wire_args if isinstance(rc.wire_args, str) else json.dumps(rc.wire_args)
                why = rc.error or f"arguments must be a JSON object, not {type(rc.args).__name__}"
                args: dict[str, Any] = {"__invalid__": raw_text[:4000], "__error__": why}
                kind, problem = "bad_tool_arguments", why
            else:
                args = rc.args
                kind = ""
                if name not in self._tool_names:
                    kind, problem = "unknown_tool", f"unknown tool {name!r}"
            call = ToolCall(id=cid, name=name, args=args)
            if not problem:
                try:
                    self._validate(call)
                except ToolArgsError as exc:
                    kind, problem = "invalid_tool_arguments", str(exc)
            if problem:
                await self._emit("agent.error", {
                    "error": kind, "detail": self._scrub(problem)[:2000], "call_id": cid,
                    "tool": self._scrub(name[:200]), "retrying": False})
            calls.append(call)
            records.append(CallRecord(id=cid, name=name, wire_args=rc.wire_args))
        return calls, records

    def _validate(self, call: ToolCall) -> None:
        """Raise ToolArgsError when the call's arguments do not fit its tool."""
        validate(call)

    def _scrub(self, text: str) -> str:
        """Provider and model text bound for events: no key, no terminal escapes."""
        for s in self._secrets:
            text = text.replace(s, "***")
        return strip_escapes(text)

    async def _emit(self, kind: str, data: dict[str, Any]) -> None:
        assert self._ctx is not None
        await self._ctx.emit(kind, data)
