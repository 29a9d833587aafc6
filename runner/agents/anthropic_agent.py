"""An agent backed by Anthropic's Messages API (the official `anthropic` SDK, AsyncAnthropic).

Tools are sent as `{name, description, input_schema}`; the model answers with `text` and
`tool_use` blocks, and each `tool_use` gets a `tool_result` block (with `is_error` when the
call failed) at the start of the next user message, followed by the notes and time left.
"""

from __future__ import annotations

import json
import os
from typing import Any

from runner.agents.history import History
from runner.agents.llm_agent import Completion, LLMAgent, RawCall, resolve_key

DEFAULT_MODEL = "claude-3-5-sonnet-20240620"


def render_messages(history: History) -> list[dict[str, Any]]:
    """The history as Messages API `messages`: user and assistant alternate, starting with user."""
    opening: list[dict[str, Any]] = [{"type": "text", "text": history.opening_text()}]
    if history.opening_trailer.text():
        opening.append({"type": "text", "text": history.opening_trailer.text()})
    messages: list[dict[str, Any]] = [{"role": "user", "content": opening}]
    for ex in history.exchanges:
        said: list[dict[str, Any]] = []
        if ex.text:
            said.append({"type": "text", "text": ex.text})
        for c in ex.calls:
            args = c.wire_args if isinstance(c.wire_args, dict) else {"__invalid__": c.wire_args}
            said.append({"type": "tool_use", "id": c.id, "name": c.name, "input": args})
        if not said:  # the API rejects an empty assistant turn
            said.append({"type": "text", "text": "(no reply)"})
        messages.append({"role": "assistant", "content": said})
        back: list[dict[str, Any]] = []
        for r in ex.results or []:
            back.append({"type": "tool_result", "tool_use_id": r.call_id,
                         "content": r.output or "(no output)", "is_error": not r.ok})
        trailer = ex.trailer.text()
        if trailer:
            back.append({"type": "text", "text": trailer})
        if back:
            messages.append({"role": "user", "content": back})
    return messages


class AnthropicAgent(LLMAgent):
    name = "anthropic"
    provider = "anthropic"

    def __init__(self, model: str = DEFAULT_MODEL, *, api_key: str | None = None,
                 base_url: str | None = None, max_tokens: int = 4096,
                 context_window: int | None = None, max_retries: int = 4,
                 timeout_s: float = 600, client: Any = None, backoff_s: float = 2.0,
                 max_backoff_s: float = 60.0) -> None:
        key = resolve_key(api_key, "ANTHROPIC_API_KEY", client)
        super().__init__(model, api_key=key, max_tokens=max_tokens,
                         context_window=context_window, max_retries=max_retries,
                         timeout_s=timeout_s, backoff_s=backoff_s, max_backoff_s=max_backoff_s)
        if client is None:
            import anthropic

            # The SDK's own retries are off: ours make each attempt an event.
            client = anthropic.AsyncAnthropic(
                api_key=key, base_url=base_url or os.environ.get("ANTHROPIC_BASE_URL") or None,
                max_retries=0, timeout=timeout_s)
        self.client = client

    def _tool_specs(self, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": t["name"], "description": t.get("description", ""),
                 "input_schema": t["parameters"]} for t in tools]

    async def _complete(self) -> Completion:
        messages = render_messages(self.history)
        resp = await self.client.messages.create(
            model=self.model, max_tokens=self.max_tokens, system=self.system,
            messages=messages, tools=self.tools)
        texts: list[str] = []
        calls: list[RawCall] = []
        for block in resp.content or []:
            kind = getattr(block, "type", None)
            if kind == "text":
                texts.append(block.text or "")
            elif kind == "tool_use":
                args = block.input
                wire = args if isinstance(args, dict) else json.dumps(args)
                calls.append(RawCall(id=block.id, name=block.name, wire_args=wire, args=args))
        usage = getattr(resp, "usage", None)
        return Completion(
            text="\n".join(t for t in texts if t),
            calls=calls,
            input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
            stop_reason=str(resp.stop_reason or ""),
            request_chars=len(self.system) + len(json.dumps(self.tools)) + len(json.dumps(messages)),
        )
