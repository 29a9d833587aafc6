"""The Anthropic and OpenAI agents, through the real SDKs, against a local server that
speaks each provider's wire protocol (tests/llm_server.py). A small sandbox-free loop
plays the supervisor: it calls `agent.turn`, validates the calls as the tool layer does,
and feeds results back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from runner.agents.anthropic_agent import AnthropicAgent
from runner.agents.base import AgentContext, AgentTurn, Observation, ToolResult
from runner.agents.llm_agent import LLMAgent
from runner.agents.openai_agent import OpenAIAgent
from runner.agents.pricing import cost_usd
from runner.events import KINDS, Event
from runner.tools import TOOL_SPECS, ToolArgsError, validate
from tests.llm_server import LLMServer, Reply

PROVIDERS = ["anthropic", "openai"]
KEY = "sk-test-SECRET-9f8e7d6c5b4a"
TASK = "Train a tiny model on the given data and submit it."


@pytest.fixture
def srv() -> Iterator[LLMServer]:
    with LLMServer() as s:
        yield s


class Loop:
    """The supervisor's part, without a sandbox: events recorded, calls answered locally."""

    def __init__(self, agent: LLMAgent) -> None:
        self.agent = agent
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.step = 0

    async def emit(self, kind: str, data: dict[str, Any]) -> None:
        assert kind in KINDS, kind
        assert kind in ("agent.error", "agent.message", "agent.delta", "usage"), f"an agent may not emit {kind}"
        Event("r1", len(self.events) + 1, 1.0, kind, data).to_json()  # JSON-clean, contract kind
        self.events.append((kind, data))

    async def start(self, time_limit_s: float = 7200) -> None:
        await self.agent.start(AgentContext("r1", TASK, TOOL_SPECS, self.emit, time_limit_s))

    async def turn(self, results: list[ToolResult] | None = None, *, time_left_s: float = 3600,
                   operator: list[str] | None = None, notices: list[str] | None = None) -> AgentTurn:
        obs = Observation(self.step, time_left_s, results or [], operator or [], notices or [])
        self.step += 1
        return await self.agent.turn(obs)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for k, d in self.events if k == kind]


def answer(turn: AgentTurn, output: str = "ok") -> list[ToolResult]:
    """What the tool layer would send back, short of running anything."""
    out = []
    for c in turn.calls:
        try:
            validate(c)
        except ToolArgsError as exc:
            out.append(ToolResult(c.id, c.name, ok=False, output=str(exc)))
        else:
            out.append(ToolResult(c.id, c.name, ok=True, output=f"{output} ({c.name})", exit_code=0))
    return out


def make(provider: str, srv: LLMServer, **kw: Any) -> LLMAgent:
    kw.setdefault("backoff_s", 0.01)
    if provider == "anthropic":
        return AnthropicAgent(kw.pop("model", "claude-3-5-sonnet-20240620"), api_key=KEY,
                              base_url=srv.url, **kw)
    return OpenAIAgent(kw.pop("model", "gpt-4o"), api_key=KEY, base_url=srv.openai_url, **kw)


async def started(provider: str, srv: LLMServer, **kw: Any) -> Loop:
    loop = Loop(make(provider, srv, **kw))
    await loop.start()
    return loop


def user_side(provider: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """(tool results, user text) sent after the model's last reply, in neutral form."""
    msgs = body["messages"]
    if provider == "anthropic":
        last = msgs[-1]
        assert last["role"] == "user"
        blocks = last["content"] if isinstance(last["content"], list) else [{"type": "text", "text": last["content"]}]
        results = [{"id": b["tool_use_id"], "output": b["content"], "error": b["is_error"]}
                   for b in blocks if b["type"] == "tool_result"]
        text = "\n".join(b["text"] for b in blocks if b["type"] == "text")
        return results, text
    i = max((k for k, m in enumerate(msgs) if m["role"] == "assistant"), default=0)
    tail = msgs[i + 1:] if i else msgs[1:]
    results = [{"id": m["tool_call_id"], "output": m["content"],
                "error": m["content"].startswith("[error]")} for m in tail if m["role"] == "tool"]
    text = "\n".join(m["content"] for m in tail if m["role"] == "user")
    return results, text


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_multi_turn_tool_calls_and_results(provider: str, srv: LLMServer) -> None:
    srv.script(
        Reply.call("bash", {"command": "ls /workspace"}, text="Let me look around."),
        Reply.calls_(("write_file", {"path": "train.py", "content": "print('hi')"}),
                     ("run_python", {"path": "train.py"})),
        Reply.call("submit", {"path": "out/model", "summary": "done"}),
    )
    loop = await started(provider, srv)
    t1 = await loop.turn()
    assert [c.name for c in t1.calls] == ["bash"] and t1.calls[0].args == {"command": "ls /workspace"}
    assert t1.text == "Let me look around." and not t1.done
    t2 = await loop.turn(answer(t1, "data.csv"))
    assert [c.name for c in t2.calls] == ["write_file", "run_python"]
    t3 = await loop.turn([ToolResult(t2.calls[0].id, "write_file", True, "wrote 11 bytes"),
                          ToolResult(t2.calls[1].id, "run_python", False, "Traceback: boom", 1)])
    assert t3.calls[0].name == "submit"
    assert srv.refusals == [] and len(srv.requests) == 3
    first = srv.requests[0].body
    if provider == "anthropic":
        assert srv.requests[0].path == "/v1/messages"
        assert TASK in first["system"][0]["text"]  # one text block: a cache breakpoint
        assert {t["name"] for t in first["tools"]} == {s["name"] for s in TOOL_SPECS}
        assert all("input_schema" in t for t in first["tools"])
        said = srv.requests[1].body["messages"][-2]
        assert said["role"] == "assistant"
        assert said["content"][1] == {"type": "tool_use", "id": t1.calls[0].id, "name": "bash",
                                      "input": {"command": "ls /workspace"}}
    else:
        assert srv.requests[0].path == "/v1/chat/completions"
        assert first["messages"][0] == {"role": "system", "content": first["messages"][0]["content"]}
        assert TASK in first["messages"][0]["content"]
        assert all(t["type"] == "function" and "parameters" in t["function"] for t in first["tools"])
        said = [m for m in srv.requests[1].body["messages"] if m["role"] == "assistant"][-1]
        assert said["tool_calls"][0]["id"] == t1.calls[0].id
        assert json.loads(said["tool_calls"][0]["function"]["arguments"]) == {"command": "ls /workspace"}
    results, _ = user_side(provider, srv.requests[1].body)
    assert results == [{"id": t1.calls[0].id, "output": "data.csv (bash)", "error": False}]
    results, _ = user_side(provider, srv.requests[2].body)
    assert [r["id"] for r in results] == [c.id for c in t2.calls]
    assert results[1]["error"] is True and "Traceback: boom" in results[1]["output"]
    assert [m["text"] for m in loop.of("agent.message")] == ["Let me look around."]
    await loop.agent.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rate_limit_waits_as_told_then_succeeds(provider: str, srv: LLMServer) -> None:
    srv.script(Reply.error(429, "rate limited", retry_after=1), Reply.call("bash", {"command": "nvidia-smi"}))
    loop = await started(provider, srv)
    turn = await loop.turn()
    assert [c.name for c in turn.calls] == ["bash"]
    [err] = loop.of("agent.error")
    assert (err["error"], err["attempt"], err["retrying"], err["status"]) == ("rate_limit", 1, True, 429)
    assert err["retry_after_s"] == 1.0
    waited = srv.requests[1].at - srv.requests[0].at
    assert waited >= 0.95, f"retried after {waited:.2f} s, not the 1 s the provider asked"
    assert loop.agent.consecutive_failures == 0 and len(loop.of("usage")) == 1
    await loop.agent.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_server_error_then_success(provider: str, srv: LLMServer) -> None:
    srv.script(Reply.error(500, "internal \x1b[2J\x1b]0;pwned\x07"),
               Reply.error(529 if provider == "anthropic" else 503),
               Reply.say("Thinking."))
    loop = await started(provider, srv)
    turn = await loop.turn()
    assert turn.text == "Thinking." and turn.calls == []
    errs = loop.of("agent.error")
    kinds = ["server_error", "overloaded" if provider == "anthropic" else "server_error"]
    assert [e["error"] for e in errs] == kinds
    assert [e["attempt"] for e in errs] == [1, 2] and all(e["retrying"] for e in errs)
    assert "internal" in errs[0]["detail"] and "\x1b" not in errs[0]["detail"]
    await loop.agent.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_exhausted_retries_return_an_error_turn_and_the_run_goes_on(provider: str, srv: LLMServer) -> None:
    srv.script(*[Reply.error(503, "unavailable")] * 3)
    loop = await started(provider, srv, max_retries=2)
    turn = await loop.turn(time_left_s=3600)
    assert turn.calls == [] and not turn.done
    assert "LLM call failed: server_error" in turn.text
    errs = loop.of("agent.error")
    assert [(e["attempt"], e["retrying"]) for e in errs] == [(1, True), (2, True), (3, False)]
    assert loop.agent.consecutive_failures == 1
    assert loop.of("usage") == []
    # A 400 is not retried at all.
    srv.script(Reply.error(400, "malformed request"))
    turn = await loop.turn(time_left_s=3500, operator=["check the logs"])
    assert loop.agent.consecutive_failures == 2 and loop.of("agent.error")[-1]["retrying"] is False
    # The next turn works, and what was said while failing still reaches the model once.
    srv.script(Reply.say("Back."))
    turn = await loop.turn(time_left_s=3400)
    assert turn.text == "Back." and loop.agent.consecutive_failures == 0
    _, text = user_side(provider, srv.requests[-1].body)
    assert text.count("check the logs") == 1
    assert "You have 0 hours 56 minutes left." in text and "58 minutes" not in text
    assert srv.refusals == []
    await loop.agent.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_timeout_is_retried(provider: str, srv: LLMServer) -> None:
    srv.script(Reply(text="late", delay_s=1.5), Reply.say("on time"))
    loop = await started(provider, srv, timeout_s=0.4)
    turn = await loop.turn()
    assert turn.text == "on time"
    assert [e["error"] for e in loop.of("agent.error")] == ["timeout"]
    await loop.agent.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_context_length_error_trims_and_retries(provider: str, srv: LLMServer) -> None:
    big = "z" * 5000
    srv.script(*[Reply.call("bash", {"command": f"cat log{i}"}) for i in range(8)])
    loop = await started(provider, srv)
    turn = await loop.turn()
    for _ in range(7):
        turn = await loop.turn(answer(turn, big))
    msg = ("prompt is too long: 250000 tokens > 200000 maximum" if provider == "anthropic"
           else "This model's maximum context length is 128000 tokens.")
    srv.script(Reply.error(400, msg, code="context_length_exceeded"), Reply.say("fits now"))
    turn = await loop.turn(answer(turn, big))
    assert turn.text == "fits now"
    assert [e["error"] for e in loop.of("agent.error")] == ["context_length"]
    assert any(m.get("code") == "history_trimmed" for m in loop.of("agent.message"))
    assert len(json.dumps(srv.requests[-1].body)) < len(json.dumps(srv.requests[-2].body)) - 10_000
    assert srv.refusals == []
    await loop.agent.close()


async def test_malformed_json_arguments_become_a_tool_error(srv: LLMServer) -> None:
    srv.script(Reply.call("bash", '{"command": "ls'), Reply.say("Sorry."))
    loop = await started("openai", srv)
    turn = await loop.turn()
    [call] = turn.calls
    assert call.name == "bash" and call.args["__invalid__"] == '{"command": "ls'
    assert "not valid JSON" in call.args["__error__"]
    with pytest.raises(ToolArgsError, match="invalid arguments for bash: arguments are not valid JSON"):
        validate(call)
    [err] = loop.of("agent.error")
    assert err["error"] == "bad_tool_arguments" and err["call_id"] == call.id
    await loop.turn(answer(turn))
    sent = [m for m in srv.requests[1].body["messages"] if m["role"] == "assistant"][-1]
    assert sent["tool_calls"][0]["function"]["arguments"] == '{"command": "ls'  # as the model wrote it
    results, _ = user_side("openai", srv.requests[1].body)
    assert results[0]["error"] and "not valid JSON" in results[0]["output"]
    assert srv.refusals == []
    await loop.agent.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_invalid_arguments_and_unknown_tools_reach_the_model_as_errors(provider: str, srv: LLMServer) -> None:
    srv.script(Reply.calls_(("bash", {"cmd": 5}), ("browse_web", {"url": "http://x"}),
                            ("bash", [1, 2]) if provider == "openai" else ("read_file", {"path": "a"})),
               Reply.say("I see."))
    loop = await started(provider, srv)
    turn = await loop.turn()
    assert [c.name for c in turn.calls][:2] == ["bash", "browse_web"]
    kinds = [(e["error"], e["tool"]) for e in loop.of("agent.error")]
    expected = [("invalid_tool_arguments", "bash"), ("unknown_tool", "browse_web")]
    if provider == "openai":
        expected.append(("bad_tool_arguments", "bash"))  # arguments that are JSON but not an object
    assert kinds == expected
    results = answer(turn)
    assert not results[0].ok and "command: Field required" in results[0].output
    assert not results[1].ok and "unknown tool 'browse_web'" in results[1].output
    assert results[2].ok is (provider == "anthropic")
    await loop.turn(results)
    sent, _ = user_side(provider, srv.requests[1].body)
    assert [r["error"] for r in sent] == [True, True, provider == "openai"]
    assert "unknown tool 'browse_web'" in sent[1]["output"]
    assert srv.refusals == []
    await loop.agent.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_operator_messages_and_notices_are_marked(provider: str, srv: LLMServer) -> None:
    srv.script(Reply.call("bash", {"command": "ls"}), Reply.say("Will do."))
    loop = await started(provider, srv)
    turn = await loop.turn()
    await loop.turn(answer(turn), operator=["Please stop training at epoch 3."],
                    notices=["80% of the time budget is used"])
    _, text = user_side(provider, srv.requests[1].body)
    assert "[Message from the human operator]\nPlease stop training at epoch 3." in text
    assert "[Runner notice] 80% of the time budget is used" in text
    # Only in the newest user message: never in the system prompt, never as a tool result.
    sent = json.dumps(srv.requests[1].body["system" if provider == "anthropic" else "messages"][:1])
    assert "epoch 3" not in sent
    assert "epoch 3" not in json.dumps(srv.requests[0].body)
    await loop.agent.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_time_left_is_stated_at_every_step(provider: str, srv: LLMServer) -> None:
    srv.script(*[Reply.call("scratchpad", {"note": f"n{i}"}) for i in range(4)])
    loop = await started(provider, srv)
    turn = None
    for left in (7200, 5430, 61, 0):
        turn = await loop.turn(answer(turn) if turn else [], time_left_s=left)
    wanted = ["You have 2 hours 0 minutes left.", "You have 1 hours 30 minutes left.",
              "You have 0 hours 1 minutes left.", "You have 0 hours 0 minutes left."]
    for req, line in zip(srv.requests, wanted, strict=True):
        _, text = user_side(provider, req.body)
        assert text.endswith(line), text
    await loop.agent.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_usage_and_cost_are_recorded_per_call(provider: str, srv: LLMServer) -> None:
    srv.script(Reply.call("bash", {"command": "ls"}), Reply.say("done"))
    loop = await started(provider, srv)
    turn = await loop.turn()
    await loop.turn(answer(turn))
    usage = loop.of("usage")
    assert len(usage) == 2
    for u, req in zip(usage, srv.requests, strict=True):
        # The local server reports a quarter of the request body's length as input tokens.
        assert u["input_tokens"] == max(1, len(json.dumps(req.body)) // 4)
        assert u["output_tokens"] > 0 and u["latency_s"] >= 0
        assert (u["cost_usd"], u["priced"]) == cost_usd(
            u["model"], u["input_tokens"], u["output_tokens"], cache_read=u["cache_read_tokens"],
            cache_write=u["cache_write_tokens"], ttl=u["cache_ttl"] or "5m")
        assert u["cost_usd"] > 0 and u["provider"] == provider
    assert loop.agent.totals["input_tokens"] == sum(u["input_tokens"] for u in usage)
    unpriced = await started(provider, srv, model="local-model-7b")
    srv.script(Reply.say("hi"))
    await unpriced.turn()
    [u] = unpriced.of("usage")
    assert (u["model"], u["cost_usd"], u["priced"]) == ("local-model-7b", None, False)
    [warn] = unpriced.of("agent.error")  # a missing price is said once, never a silent zero
    assert warn["error"] == "unpriced_model" and "local-model-7b" in warn["detail"]
    await loop.agent.close()
    await unpriced.agent.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_long_runs_are_trimmed_and_pairs_stay_intact(provider: str, srv: LLMServer) -> None:
    steps = 14
    srv.script(*[Reply.calls_(("bash", {"command": f"python step{i}.py"}),
                              ("write_file", {"path": f"s{i}.py", "content": "w" * 3000}))
                 for i in range(steps)])
    loop = await started(provider, srv, context_window=12_000, max_tokens=1000)
    turn = await loop.turn()
    for _ in range(steps - 1):
        turn = await loop.turn(answer(turn, "log line\n" * 400))
    assert srv.refusals == []  # every request paired each tool call with its result
    assert len(srv.requests) == steps
    trims = [m for m in loop.of("agent.message") if m["role"] == "system"]
    assert trims and all(m["code"] == "history_trimmed" for m in trims)
    last = srv.requests[-1].body
    assert len(json.dumps(last)) < 12_000 * 4
    text = json.dumps(last)
    assert "earlier steps were removed" in text or "[output elided:" in text
    assert "Begin working on the task" in text  # the opening is always kept
    assert "python step12.py" in text  # the newest steps are whole
    await loop.agent.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_no_tool_call_is_nudged_then_done(provider: str, srv: LLMServer) -> None:
    srv.script(Reply.say("I think I am finished."), Reply.say("Yes."), Reply.say("Really."))
    loop = await started(provider, srv)
    turns = [await loop.turn() for _ in range(3)]
    assert [t.done for t in turns] == [False, False, True]
    _, text = user_side(provider, srv.requests[1].body)
    assert "You did not call a tool" in text
    await loop.agent.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_keys_never_reach_events_or_tool_calls(provider: str, srv: LLMServer) -> None:
    # Providers echo (part of) a bad key in their 401 messages; the agent must not pass it on.
    srv.script(Reply.error(401, f"Incorrect API key provided: {KEY}."),
               Reply.error(429, f"limit for key {KEY}", retry_after_ms=10),
               Reply.call("bash", {"command": "env"}), Reply.say("done"))
    loop = await started(provider, srv)
    t1 = await loop.turn()
    assert t1.calls == [] and KEY not in t1.text
    t2 = await loop.turn()
    t3 = await loop.turn(answer(t2, "PATH=/usr/bin"))
    assert srv.requests[0].headers.get("authorization", srv.requests[0].headers.get("x-api-key", "")).endswith(KEY)
    everything = json.dumps([loop.events, [t.text for t in (t1, t2, t3)],
                             [c.args for t in (t1, t2, t3) for c in t.calls]])
    assert KEY not in everything and KEY[:16] not in everything
    for req in srv.requests:
        assert KEY not in json.dumps(req.body)  # never in what the model reads either
    assert len(loop.of("agent.error")) == 2
    await loop.agent.close()
