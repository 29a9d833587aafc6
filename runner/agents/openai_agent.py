"""An agent backed by OpenAI's Chat Completions API (the official `openai` SDK, AsyncOpenAI).

Tools are sent as `{"type": "function", "function": {name, description, parameters}}`; the
model answers with `tool_calls` whose `function.arguments` is a JSON string that may not
parse; each call gets a `role: "tool"` message with its `tool_call_id`, then the notes and
time left follow as a user message. Reasoning models (o1, o3, o4, gpt-5) take
`max_completion_tokens` and a `developer` message in place of `system`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from runner.agents.history import History
from runner.agents.llm_agent import Completion, LLMAgent, RawCall, resolve_key

DEFAULT_MODEL = "gpt-4o"
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


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
                 max_backoff_s: float = 60.0) -> None:
        key = resolve_key(api_key, "OPENAI_API_KEY", client)
        super().__init__(model, api_key=key, max_tokens=max_tokens,
                         context_window=context_window, max_retries=max_retries,
                         timeout_s=timeout_s, backoff_s=backoff_s, max_backoff_s=max_backoff_s)
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

    async def _complete(self) -> Completion:
        messages = render_messages(self.system, self.history,
                                   system_role="developer" if self._reasoning else "system")
        limit = ({"max_completion_tokens": self.max_tokens} if self._reasoning
                 else {"max_tokens": self.max_tokens})
        resp = await self.client.chat.completions.create(
            model=self.model, messages=messages, tools=self.tools, **limit)
        choice = resp.choices[0] if resp.choices else None
        msg = getattr(choice, "message", None)
        calls: list[RawCall] = []
        for tc in getattr(msg, "tool_calls", None) or []:
            fn = getattr(tc, "function", None)
            if fn is None:  # a non-function (custom) tool call: no such tool here
                calls.append(RawCall(id=tc.id, name=str(getattr(tc, "type", "custom")),
                                     wire_args="{}", args={}))
                continue
            raw = fn.arguments if isinstance(fn.arguments, str) else json.dumps(fn.arguments)
            try:
                args = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError as exc:
                calls.append(RawCall(id=tc.id, name=fn.name, wire_args=raw, args=None,
                                     error=f"arguments are not valid JSON ({exc.msg} at char {exc.pos})"))
                continue
            calls.append(RawCall(id=tc.id, name=fn.name, wire_args=raw, args=args))
        usage = getattr(resp, "usage", None)
        return Completion(
            text=(getattr(msg, "content", None) or "") if msg else "",
            calls=calls,
            input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            stop_reason=str(getattr(choice, "finish_reason", "") or ""),
            request_chars=len(json.dumps(self.tools)) + len(json.dumps(messages)),
        )
