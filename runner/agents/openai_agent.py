"""An agent backed by OpenAI's Chat Completions API (the official `openai` SDK, AsyncOpenAI).

Tools are sent as `{"type": "function", "function": {name, description, parameters}}`; the
model answers with `tool_calls` whose `function.arguments` is a JSON string that may not
parse; each call gets a `role: "tool"` message with its `tool_call_id`, then the notes and
time left follow as a user message. Reasoning models (o1, o3, o4, gpt-5) take
`max_completion_tokens`, a `developer` message in place of `system`, and a
`reasoning_effort`. OpenAI caches a prompt's prefix on its own; the cached part comes back
as `usage.prompt_tokens_details.cached_tokens`. A streamed reply asks for the usage in its
last chunk (`stream_options.include_usage`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from runner.agents.errors import AgentConfigError
from runner.agents.history import History
from runner.agents.llm_agent import (
    Completion,
    LLMAgent,
    RawCall,
    StreamCut,
    parse_args,
    resolve_key,
)

DEFAULT_MODEL = "gpt-4o"
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
REASONING_EFFORTS = ("minimal", "low", "medium", "high")


def is_reasoning_model(model: str) -> bool:
    return any(model == p or model.startswith(p + "-") for p in _REASONING_PREFIXES)


def render_messages(system: str, history: History, *, system_role: str = "system") -> list[dict[str, Any]]:
    """The history as Chat Completions `messages`."""
    opening = history.opening_text()
    if history.opening_trailer.text():
        opening += "\n\n" + history.opening_trailer.text()
    messages: list[dict[str, Any]] = [{"role": system_role, "content": system},
                                      {"role": "user", "content": opening}]
    for ex in history.exchanges:
        said: dict[str, Any] = {"role": "assistant", "content": ex.text or None}
        if ex.calls:
            said["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name,
                              "arguments": c.wire_args if isinstance(c.wire_args, str)
                              else json.dumps(c.wire_args)}}
                for c in ex.calls]
        elif not ex.text:
            said["content"] = "(no reply)"
        messages.append(said)
        for r in ex.results or []:
            content = r.output or "(no output)"
            if not r.ok:
                content = f"[error] {content}"
            messages.append({"role": "tool", "tool_call_id": r.call_id, "content": content})
        trailer = ex.trailer.text()
        if trailer:
            messages.append({"role": "user", "content": trailer})
    return messages


class OpenAIAgent(LLMAgent):
    name = "openai"
    provider = "openai"

    def __init__(self, model: str = DEFAULT_MODEL, *, api_key: str | None = None,
                 base_url: str | None = None, max_tokens: int = 4096,
                 context_window: int | None = None, max_retries: int = 4,
                 timeout_s: float = 600, client: Any = None, backoff_s: float = 2.0,
                 max_backoff_s: float = 60.0, stream: bool = True, cache: bool = True,
                 reasoning_effort: str | None = None) -> None:
        key = resolve_key(api_key, "OPENAI_API_KEY", client)
        super().__init__(model, api_key=key, max_tokens=max_tokens,
                         context_window=context_window, max_retries=max_retries,
                         timeout_s=timeout_s, backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                         stream=stream, cache=cache)
        if reasoning_effort is not None and (reasoning_effort not in REASONING_EFFORTS
                                             or not is_reasoning_model(model)):
            raise AgentConfigError(f"reasoning_effort is one of {', '.join(REASONING_EFFORTS)},"
                                   f" for a reasoning model ({', '.join(_REASONING_PREFIXES)}),"
                                   f" not {reasoning_effort!r} for {model!r}")
        self.reasoning_effort = reasoning_effort
        if client is None:
            import openai

            # The SDK's own retries are off: ours make each attempt an event.
            client = openai.AsyncOpenAI(
                api_key=key, base_url=base_url or os.environ.get("OPENAI_BASE_URL") or None,
                max_retries=0, timeout=timeout_s)
        self.client = client
        self._reasoning = is_reasoning_model(model)

    def _tool_specs(self, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"type": "function",
                 "function": {"name": t["name"], "description": t.get("description", ""),
                              "parameters": t["parameters"]}} for t in tools]

    def request(self) -> dict[str, Any]:
        """The Chat Completions request for the current history."""
        messages = render_messages(self.system, self.history,
                                   system_role="developer" if self._reasoning else "system")
        req: dict[str, Any] = {"model": self.model, "messages": messages, "tools": self.tools}
        if self._reasoning:
            req["max_completion_tokens"] = self.max_tokens
            if self.reasoning_effort is not None:
                req["reasoning_effort"] = self.reasoning_effort
        else:
            req["max_tokens"] = self.max_tokens
        return req

    async def _complete(self) -> Completion:
        req = self.request()
        if self.stream:
            text, raw, finish, usage = await self._streamed(req)
        else:
            resp = await self.client.chat.completions.create(**req)
            choice = resp.choices[0] if resp.choices else None
            msg = getattr(choice, "message", None)
            text = (getattr(msg, "content", None) or "") if msg else ""
            finish = str(getattr(choice, "finish_reason", "") or "")
            usage = getattr(resp, "usage", None)
            raw = []
            for tc in getattr(msg, "tool_calls", None) or []:
                fn = getattr(tc, "function", None)
                if fn is None:  # a non-function (custom) tool call: no such tool here
                    raw.append((tc.id, str(getattr(tc, "type", "custom")), None))
                    continue
                args = fn.arguments if isinstance(fn.arguments, str) else json.dumps(fn.arguments)
                raw.append((tc.id, fn.name, args))
        calls: list[RawCall] = []
        for cid, name, args_text in raw:
            if args_text is None:
                calls.append(RawCall(id=cid, name=name, wire_args="{}", args={}))
                continue
            args, error = parse_args(args_text)
            calls.append(RawCall(id=cid, name=name, wire_args=args_text, args=args, error=error))
        details = getattr(usage, "prompt_tokens_details", None)
        return Completion(
            text=text,
            calls=calls,
            input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            stop_reason=finish,
            request_chars=len(json.dumps(self.tools)) + len(json.dumps(req["messages"])),
            cache_read_tokens=int(getattr(details, "cached_tokens", 0) or 0),
        )

    async def _streamed(self, req: dict[str, Any]) -> tuple[str, list[tuple[Any, Any, str | None]], str, Any]:
        """(text, calls as (id, name, raw arguments), finish reason, usage) of a streamed reply,
        its pieces sent on as they come."""
        deltas = self._deltas
        stream = await self.client.chat.completions.create(
            **req, stream=True, stream_options={"include_usage": True})
        text: list[str] = []
        slots: dict[int, dict[str, Any]] = {}
        finish = ""
        usage = None
        async for chunk in stream:
            if getattr(chunk, "usage", None) is not None:
                usage = chunk.usage
            for ch in chunk.choices or []:
                d = ch.delta
                if d is not None and d.content:
                    text.append(d.content)
                    if deltas is not None:
                        await deltas.add("text", d.content)
                for tc in (d.tool_calls if d is not None else None) or []:
                    slot = slots.setdefault(tc.index, {"id": None, "name": "", "args": [],
                                                       "function": False})
                    slot["id"] = tc.id or slot["id"]
                    fn = tc.function
                    if fn is not None:
                        slot["function"] = True
                        slot["name"] += fn.name or ""
                        if fn.arguments:
                            slot["args"].append(fn.arguments)
                            if deltas is not None:
                                await deltas.add("tool_args", fn.arguments, slot["name"])
                if ch.finish_reason:
                    finish = str(ch.finish_reason)
        if not finish or usage is None:
            raise StreamCut("the stream ended before the reply did (no finish_reason or usage)")
        calls = [(s["id"], s["name"] if s["function"] else "custom",
                  "".join(s["args"]) if s["function"] else None)
                 for _, s in sorted(slots.items())]
        return "".join(text), calls, finish, usage
