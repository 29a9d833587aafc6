"""An agent backed by Anthropic's Messages API (the official `anthropic` SDK, AsyncAnthropic).

Tools are sent as `{name, description, input_schema}`; the model answers with `text` and
`tool_use` blocks, and each `tool_use` gets a `tool_result` block (with `is_error` when the
call failed) at the start of the next user message, followed by the notes and time left.

Prompt caching: `cache_control` breakpoints (4, the API's most) on the last tool, the system
prompt, and the last two user messages, so each call reads the conversation so far from the
cache and writes only what is new; the lifetime ("5m" or "1h") is the agent's `cache_ttl`.
Extended thinking (`thinking_budget`): the thinking blocks come back into the history with
their signatures, ahead of the reply's text and tool calls, as the API requires with tools.
"""

from __future__ import annotations

import json
import os
from typing import Any

from runner.agents.errors import AgentConfigError
from runner.agents.history import History
from runner.agents.llm_agent import Completion, LLMAgent, RawCall, StreamCut, resolve_key

DEFAULT_MODEL = "claude-3-5-sonnet-20240620"
MAX_BREAKPOINTS = 4  # the Messages API refuses more cache_control blocks than this


def render_messages(history: History, *, cache_ttl: str | None = None) -> list[dict[str, Any]]:
    """The history as Messages API `messages`: user and assistant alternate, starting with user.

    With `cache_ttl`, the last block of each of the last two user messages is a cache
    breakpoint: the newest one writes the conversation so far, the one before reads it back.
    """
    opening: list[dict[str, Any]] = [{"type": "text", "text": history.opening_text()}]
    if history.opening_trailer.text():
        opening.append({"type": "text", "text": history.opening_trailer.text()})
    messages: list[dict[str, Any]] = [{"role": "user", "content": opening}]
    for ex in history.exchanges:
        said: list[dict[str, Any]] = [dict(b) for b in ex.thinking]
        if ex.text:
            said.append({"type": "text", "text": ex.text})
        for c in ex.calls:
            args = c.wire_args if isinstance(c.wire_args, dict) else {"__invalid__": c.wire_args}
            said.append({"type": "tool_use", "id": c.id, "name": c.name, "input": args})
        if not any(b["type"] in ("text", "tool_use") for b in said):
            said.append({"type": "text", "text": "(no reply)"})  # the API rejects an empty turn
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
    if cache_ttl is not None:
        users = [m for m in messages if m["role"] == "user"]
        for m in users[-(MAX_BREAKPOINTS - 2):]:
            m["content"][-1] = {**m["content"][-1], "cache_control": cache_control(cache_ttl)}
    return messages


def cache_control(ttl: str) -> dict[str, str]:
    # "5m" is the API's default; saying it keeps every breakpoint explicit in the request
    return {"type": "ephemeral", "ttl": ttl}


class AnthropicAgent(LLMAgent):
    name = "anthropic"
    provider = "anthropic"

    def __init__(self, model: str = DEFAULT_MODEL, *, api_key: str | None = None,
                 base_url: str | None = None, max_tokens: int = 4096,
                 context_window: int | None = None, max_retries: int = 4,
                 timeout_s: float = 600, client: Any = None, backoff_s: float = 2.0,
                 max_backoff_s: float = 60.0, stream: bool = True, cache: bool = True,
                 thinking_budget: int | None = None) -> None:
        key = resolve_key(api_key, "ANTHROPIC_API_KEY", client)
        super().__init__(model, api_key=key, max_tokens=max_tokens,
                         context_window=context_window, max_retries=max_retries,
                         timeout_s=timeout_s, backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                         stream=stream, cache=cache)
        if thinking_budget is not None and not 1024 <= thinking_budget < max_tokens:
            raise AgentConfigError("thinking_budget must be at least 1024 and below max_tokens "
                                   f"({max_tokens}), as the Messages API requires")
        self.thinking_budget = thinking_budget
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

    def request(self) -> dict[str, Any]:
        """The Messages API request for the current history."""
        ttl = self.cache_ttl if self.cache else None
        system: str | list[dict[str, Any]] = self.system
        tools = self.tools
        if ttl is not None:
            system = [{"type": "text", "text": self.system, "cache_control": cache_control(ttl)}]
            if tools:
                tools = [*tools[:-1], {**tools[-1], "cache_control": cache_control(ttl)}]
        req: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens,
                               "system": system, "messages": render_messages(self.history,
                                                                             cache_ttl=ttl),
                               "tools": tools}
        if self.thinking_budget is not None:
            req["thinking"] = {"type": "enabled", "budget_tokens": self.thinking_budget}
        return req

    async def _complete(self) -> Completion:
        req = self.request()
        if self.stream:
            resp = await self._streamed(req)
        else:
            resp = await self.client.messages.create(**req)
        texts: list[str] = []
        calls: list[RawCall] = []
        thinking: list[dict[str, Any]] = []
        for block in resp.content or []:
            kind = getattr(block, "type", None)
            if kind == "text":
                texts.append(block.text or "")
            elif kind == "tool_use":
                args = block.input
                wire = args if isinstance(args, dict) else json.dumps(args)
                calls.append(RawCall(id=block.id, name=block.name, wire_args=wire, args=args))
            elif kind == "thinking":
                thinking.append({"type": "thinking", "thinking": block.thinking,
                                 "signature": block.signature})
            elif kind == "redacted_thinking":
                thinking.append({"type": "redacted_thinking", "data": block.data})
        usage = getattr(resp, "usage", None)
        plain = int(getattr(usage, "input_tokens", 0) or 0)
        written = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
        read = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
        return Completion(
            text="\n".join(t for t in texts if t),
            calls=calls,
            input_tokens=plain + written + read,  # the API counts the cached parts apart
            output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
            stop_reason=str(resp.stop_reason or ""),
            request_chars=(len(self.system) + len(json.dumps(self.tools))
                           + len(json.dumps(req["messages"]))),
            cache_write_tokens=written, cache_read_tokens=read, thinking=thinking,
        )

    async def _streamed(self, req: dict[str, Any]) -> Any:
        """The reply through the streaming API, its pieces sent on as they come."""
        deltas = self._deltas
        tool: str | None = None
        async with self.client.messages.stream(**req) as stream:
            async for ev in stream:
                kind = ev.type
                if kind == "content_block_start":
                    block = ev.content_block
                    tool = block.name if block.type == "tool_use" else None
                elif deltas is None:
                    continue
                elif kind == "text":
                    await deltas.add("text", ev.text)
                elif kind == "thinking":
                    await deltas.add("thinking", ev.thinking)
                elif kind == "input_json":
                    await deltas.add("tool_args", ev.partial_json, tool)
            resp = await stream.get_final_message()
        if not resp.stop_reason:
            raise StreamCut("the stream ended before the reply did (no message_stop)")
        return resp
