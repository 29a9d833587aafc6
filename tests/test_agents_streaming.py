"""Cost and liveness of the LLM agents, through the real SDKs against the stand-in server
(tests/llm_server.py), which streams and accounts for caches the way the real APIs do:
Anthropic's cache breakpoints and their lifetime, OpenAI's cached input, usage at cache
prices, streamed text reaching the console's state, a stream cut halfway and retried,
extended thinking kept in the history, and OpenAI's reasoning effort."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlrb_tui.state import RunState
from mlrb_tui.widgets.live_reply import render_live
from runner.agents import make_agent
from runner.agents.anthropic_agent import AnthropicAgent
from runner.agents.base import AgentContext, AgentTurn, Observation, ToolResult, TurnRecord
from runner.agents.errors import AgentConfigError
from runner.agents.llm_agent import LLMAgent
from runner.agents.openai_agent import OpenAIAgent
from runner.agents.pricing import cost_usd
from runner.events import EventFactory
from runner.tools import TOOL_SPECS
from tests.llm_server import Clock, LLMServer, Reply
from tests.test_agents_providers import KEY, TASK, Loop, answer, make

PROVIDERS = ["anthropic", "openai"]


@pytest.fixture
def srv() -> Iterator[LLMServer]:
    with LLMServer(min_cache_tokens=0) as s:
        yield s


class ConsoleLoop(Loop):
    """The supervisor's part, with every event also folded into the console's RunState."""

    def __init__(self, agent: LLMAgent) -> None:
        super().__init__(agent)
        self.factory = EventFactory("r1")
        self.state = RunState("r1")
        self.live_seen: list[str] = []  # the live reply's text after each delta
        self.drawn: list[str] = []  # what the run view's widget would draw after each delta

    async def emit(self, kind: str, data: dict[str, Any]) -> None:
        await super().emit(kind, data)
        ev = self.factory.make(kind, data)
        assert self.state.apply(ev)
        if kind == "agent.delta":
            self.live_seen.append(self.state.live.text())
            self.drawn.append(render_live(self.state.live).plain)


async def console(provider: str, srv: LLMServer, **kw: Any) -> ConsoleLoop:
    loop = ConsoleLoop(make(provider, srv, **kw))
    await loop.start()
    return loop


def breakpoints(body: dict[str, Any]) -> list[tuple[str, str]]:
    """Where a request's cache_control blocks are: (place, ttl)."""
    out = [("tool", t["cache_control"]["ttl"]) for t in body.get("tools") or [] if "cache_control" in t]
    system = body.get("system")
    out += [("system", b["cache_control"]["ttl"]) for b in system if "cache_control" in b] \
        if isinstance(system, list) else []
    for i, m in enumerate(body["messages"]):
        content = m["content"] if isinstance(m["content"], list) else []
        for k, b in enumerate(content):
            if "cache_control" in b:
                assert k == len(content) - 1, "a breakpoint ends its message"
                out.append((f"{m['role']}{i}", b["cache_control"]["ttl"]))
    return out


# -- caching ---------------------------------------------------------------------------------
async def test_anthropic_breakpoints_sit_on_tools_system_and_the_last_user_turns(srv: LLMServer) -> None:
    srv.script(*[Reply.call("bash", {"command": f"python step{i}.py"}) for i in range(4)])
    loop = await console("anthropic", srv)
    turn = await loop.turn()
    for _ in range(3):
        turn = await loop.turn(answer(turn, "loss 0.5\n" * 50))
    assert srv.refusals == []
    bodies = [r.body for r in srv.requests]
    assert breakpoints(bodies[0]) == [("tool", "5m"), ("system", "5m"), ("user0", "5m")]
    for body in bodies[1:]:
        users = [i for i, m in enumerate(body["messages"]) if m["role"] == "user"]
        assert breakpoints(body) == [("tool", "5m"), ("system", "5m"),
                                     (f"user{users[-2]}", "5m"), (f"user{users[-1]}", "5m")]
    usage = loop.of("usage")
    # The first call writes its whole prompt; each later one reads what the one before wrote
    # and writes only what is new.
    assert usage[0]["cache_read_tokens"] == 0 and usage[0]["cache_write_tokens"] > 0
    for before, u in zip(usage, usage[1:], strict=False):
        assert u["cache_read_tokens"] >= before["cache_read_tokens"] + before["cache_write_tokens"] - 50
        assert 0 < u["cache_write_tokens"] < u["cache_read_tokens"]
        assert u["cache_ttl"] == "5m"
    for u, req in zip(usage, srv.requests, strict=True):
        assert u["input_tokens"] == max(1, len(json.dumps(req.body)) // 4)  # every prompt token
        assert (u["cost_usd"], True) == cost_usd(u["model"], u["input_tokens"], u["output_tokens"],
                                                 cache_read=u["cache_read_tokens"],
                                                 cache_write=u["cache_write_tokens"])
    uncached = cost_usd(usage[-1]["model"], usage[-1]["input_tokens"], usage[-1]["output_tokens"])[0]
    assert uncached is not None and usage[-1]["cost_usd"] < 0.5 * uncached
    totals = loop.agent.totals
    assert totals["cache_read_tokens"] == sum(u["cache_read_tokens"] for u in usage)
    assert totals["input_tokens"] == sum(u["input_tokens"] for u in usage)
    await loop.agent.close()


async def test_caching_can_be_turned_off(srv: LLMServer) -> None:
    srv.script(Reply.say("hi"))
    loop = await console("anthropic", srv, cache=False)
    await loop.turn()
    assert breakpoints(srv.requests[0].body) == [] and isinstance(srv.requests[0].body["system"], str)
    [u] = loop.of("usage")
    assert (u["cache_read_tokens"], u["cache_write_tokens"], u["cache_ttl"]) == (0, 0, None)
    await loop.agent.close()


async def test_a_long_wait_asks_for_an_hour_and_the_cache_outlives_it(srv: LLMServer) -> None:
    clock = Clock()
    srv.clock = clock
    srv.script(*[Reply.call("bash", {"command": f"python train.py --run {i}"}) for i in range(5)])
    loop = await console("anthropic", srv)
    loop.agent.clock = clock
    records: list[TurnRecord] = []

    async def step(results: list[ToolResult], wait_s: float) -> AgentTurn:
        clock.now += wait_s
        obs = Observation(loop.step, 3600, results)
        loop.step += 1
        turn = await loop.agent.turn(obs)
        records.append(TurnRecord(obs, turn))
        return turn

    def trained(turn: AgentTurn, took_s: float) -> list[ToolResult]:
        return [ToolResult(c.id, c.name, True, "epoch 3 loss 0.1", 0, took_s) for c in turn.calls]

    t = await step([], 0)
    t = await step(trained(t, 5), 10)  # a quick command: the 5-minute cache is read
    t = await step(trained(t, 1200), 1200)  # a 20-minute training run: the 5-minute cache died
    t = await step(trained(t, 1300), 1300)  # another: the hour written last time is read
    ttls = [u["cache_ttl"] for u in loop.of("usage")]
    assert ttls == ["5m", "5m", "1h", "1h"]
    assert {ttl for _, ttl in breakpoints(srv.requests[2].body)} == {"1h"}
    reads = [u["cache_read_tokens"] for u in loop.of("usage")]
    assert reads[0] == 0 and reads[1] > 0 and reads[2] == 0 and reads[3] > reads[1]
    assert [r.turn.state["ttl"] for r in records] == ttls
    # A rebuilt agent knows the waits and the lifetime: its next request is the same.
    again = make("anthropic", srv)
    again.clock = clock
    ctx = AgentContext("r1", TASK, TOOL_SPECS, loop.emit, 7200)
    await again.resume(ctx, [TurnRecord(r.obs, AgentTurn(r.turn.calls, r.turn.text, r.turn.done,
                                                         json.loads(json.dumps(r.turn.state))))
                             for r in records])
    assert again.totals == loop.agent.totals
    srv.script(Reply.say("a"), Reply.say("a"))
    clock.now += 30
    nxt = Observation(9, 3000, trained(t, 20))
    await loop.agent.turn(nxt)
    await again.turn(nxt)
    assert srv.requests[-1].body == srv.requests[-2].body
    assert {ttl for _, ttl in breakpoints(srv.requests[-1].body)} == {"1h"}
    await loop.agent.close()
    await again.close()


async def test_openai_cached_input_is_recorded_and_priced() -> None:
    with LLMServer() as srv:  # OpenAI caches from 1024 prompt tokens, in 128-token steps
        srv.script(*[Reply.call("bash", {"command": f"ls {i}"}) for i in range(3)])
        loop = await console("openai", srv)
        turn = await loop.turn()
        for _ in range(2):
            turn = await loop.turn(answer(turn, "file.txt\n" * 300))
        usage = loop.of("usage")
        assert usage[0]["cache_read_tokens"] == 0
        for u, req in zip(usage[1:], srv.requests[1:], strict=True):
            assert u["input_tokens"] == max(1, len(json.dumps(req.body)) // 4)
            assert 1024 <= u["cache_read_tokens"] < u["input_tokens"]
            assert u["cache_read_tokens"] % 128 == 0 and u["cache_write_tokens"] == 0
            assert u["cache_ttl"] is None
            full = cost_usd("gpt-4o", u["input_tokens"], u["output_tokens"])[0]
            assert full is not None and u["cost_usd"] == cost_usd(
                "gpt-4o", u["input_tokens"], u["output_tokens"], cache_read=u["cache_read_tokens"])[0]
            assert u["cost_usd"] < full
        await loop.agent.close()


# -- streaming -------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_streamed_text_and_arguments_reach_the_console_as_they_arrive(
        provider: str, srv: LLMServer) -> None:
    said = "I will train a small model first, then look at the validation loss. " * 3
    srv.script(Reply(text=said, calls=[("bash", {"command": "python train.py --epochs 3"})],
                     chunk_chars=4, chunk_delay_s=0.01))
    loop = await console(provider, srv)
    turn = await loop.turn()
    assert turn.text == said and turn.calls[0].args == {"command": "python train.py --epochs 3"}
    deltas = loop.of("agent.delta")
    # coalesced: far fewer events than the stream's pieces, but more than one
    assert 3 <= len(deltas) < len(said) // 4
    assert "".join(d["text"] for d in deltas if d["part"] == "text") == said
    args = "".join(d["text"] for d in deltas if d["part"] == "tool_args")
    assert json.loads(args) == {"command": "python train.py --epochs 3"}
    assert {d["tool"] for d in deltas if d["part"] == "tool_args"} == {"bash"}
    # The console's state grew with the stream, one prefix after another, before the reply
    # was whole; the run view's widget renders its tail.
    seen = loop.live_seen
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:], strict=False))
    assert seen[0] and len(seen[0]) < len(said) and seen[-1] == said + 'bash({"command": "python train.py --epochs 3"}'
    assert 'bash({"command": "python train.py --epochs 3"}' in loop.drawn[-1]
    assert all(len(d.splitlines()) <= 7 for d in loop.drawn)  # a header and the last 6 lines
    # The usage lands as before, and the reply, whole, is the timeline's; the live part is gone.
    assert len(loop.of("usage")) == 1 and not loop.state.live.parts
    assert any(e.kind == "agent.message" and said.strip()[:40] in e.text for e in loop.state.timeline)
    await loop.agent.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_stream_cut_halfway_is_retried(provider: str, srv: LLMServer) -> None:
    srv.script(Reply(text="The first attempt says this and then " * 4, cut_after=12),
               Reply.call("bash", {"command": "nvidia-smi"}, text="Second try."))
    loop = await console(provider, srv)
    turn = await loop.turn()
    assert turn.text == "Second try." and [c.name for c in turn.calls] == ["bash"]
    [err] = loop.of("agent.error")
    assert (err["error"], err["retrying"], err["attempt"]) == ("stream_broken", True, 1)
    deltas = loop.of("agent.delta")
    assert {d["attempt"] for d in deltas} == {1, 2}
    assert len(srv.requests) == 2 and len(loop.of("usage")) == 1
    # the console dropped the broken attempt's text when the error came
    assert "Second try." in loop.live_seen[-1] and "first attempt" not in loop.live_seen[-1]
    assert not loop.state.live.parts
    await loop.agent.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_streaming_can_be_turned_off(provider: str, srv: LLMServer) -> None:
    srv.script(Reply.say("whole"))
    loop = await console(provider, srv, stream=False)
    turn = await loop.turn()
    assert turn.text == "whole" and loop.of("agent.delta") == []
    assert "stream" not in srv.requests[0].body and len(loop.of("usage")) == 1
    await loop.agent.close()


# -- reasoning -------------------------------------------------------------------------------
async def test_thinking_blocks_stay_in_the_history_and_survive_resume(srv: LLMServer) -> None:
    srv.script(Reply(thinking="List the files first.", calls=[("bash", {"command": "ls"})]),
               Reply(thinking="Now train.", calls=[("bash", {"command": "python train.py"})],
                     text="Training."))
    loop = await console("anthropic", srv, thinking_budget=2048, max_tokens=8192)
    records: list[TurnRecord] = []
    results: list[ToolResult] = []
    for step in range(2):
        obs = Observation(step, 3600, results)
        turn = await loop.agent.turn(obs)
        records.append(TurnRecord(obs, turn))
        results = answer(turn)
    assert srv.refusals == []  # the stand-in refuses a tool-use turn sent back without its thinking
    second = srv.requests[1].body
    assert second["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    said = second["messages"][1]
    assert said["role"] == "assistant" and said["content"][0]["type"] == "thinking"
    assert said["content"][0]["thinking"] == "List the files first." and said["content"][0]["signature"]
    assert {d["part"] for d in loop.of("agent.delta")} >= {"thinking", "tool_args"}
    # Without the block, the API would refuse the request.
    bare = json.loads(json.dumps(second))
    bare["messages"][1]["content"] = bare["messages"][1]["content"][1:]
    assert "must start with a thinking block" in srv.check_thinking(bare)
    # A rebuilt agent sends the same blocks back.
    again = make("anthropic", srv, thinking_budget=2048, max_tokens=8192)
    await again.resume(AgentContext("r1", TASK, TOOL_SPECS, loop.emit, 7200),
                       [TurnRecord(r.obs, AgentTurn(r.turn.calls, r.turn.text, r.turn.done,
                                                    json.loads(json.dumps(r.turn.state))))
                        for r in records])
    assert again.history == loop.agent.history
    srv.script(Reply(thinking="Done.", text="ok"), Reply(thinking="Done.", text="ok"))
    nxt = Observation(3, 3000, results)
    await loop.agent.turn(nxt)
    await again.turn(nxt)
    assert srv.requests[-1].body == srv.requests[-2].body and srv.refusals == []
    await loop.agent.close()
    await again.close()


async def test_openai_reasoning_effort_is_sent(srv: LLMServer) -> None:
    srv.script(Reply.say("thought about it"))
    agent = OpenAIAgent("o3-mini", api_key=KEY, base_url=srv.openai_url, reasoning_effort="high")
    loop = ConsoleLoop(agent)
    await loop.start()
    await loop.turn()
    body = srv.requests[0].body
    assert body["reasoning_effort"] == "high" and body["max_completion_tokens"] == 4096
    assert body["messages"][0]["role"] == "developer" and "max_tokens" not in body
    await agent.close()


def test_reasoning_options_are_checked() -> None:
    with pytest.raises(AgentConfigError, match="reasoning_effort"):
        make_agent("openai", "gpt-4o", {"api_key": KEY, "reasoning_effort": "high"})
    with pytest.raises(AgentConfigError, match="reasoning_effort"):
        make_agent("openai", "o3", {"api_key": KEY, "reasoning_effort": "extreme"})
    with pytest.raises(AgentConfigError, match="unknown option"):
        make_agent("anthropic", None, {"api_key": KEY, "reasoning_effort": "high"})
    with pytest.raises(AgentConfigError, match="thinking_budget"):
        AnthropicAgent(api_key=KEY, thinking_budget=4096, max_tokens=4096)
    agent = make_agent("anthropic", None, {"api_key": KEY, "thinking_budget": 2048,
                                           "max_tokens": 8000, "stream": True, "cache": False})
    assert isinstance(agent, AnthropicAgent) and agent.thinking_budget == 2048 and not agent.cache


# -- the run view ----------------------------------------------------------------------------
async def test_the_run_view_shows_a_reply_while_it_streams(tmp_path: Path) -> None:
    from mlrb_tui.widgets.live_reply import LiveReplyView
    from tests.fixtures.console_app import SIZE, Catcher, Feed, make_app, until
    from tests.fixtures.demo_journal import NOW, RUNNING
    from tests.test_console_run_view import open_run

    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_run(pilot, app)
        view = screen.query_one(LiveReplyView)
        assert not view.display  # nothing streaming: no room taken
        f = EventFactory(RUNNING, next_seq=app.fleet.last_seq(RUNNING) + 1)
        feed.push(f.make("agent.delta", {"step": 9, "part": "text", "attempt": 1,
                                         "text": "The loss is flat; I will lower the "}, ts=NOW),
                  f.make("agent.delta", {"step": 9, "part": "text", "attempt": 1,
                                         "text": "learning rate."}, ts=NOW + 0.1),
                  f.make("agent.delta", {"step": 9, "part": "tool_args", "attempt": 1, "tool": "bash",
                                         "text": '{"command": "python train.py --lr 1e-4'},
                         ts=NOW + 0.2))
        await until(pilot, lambda: view.display and "--lr 1e-4" in str(view.render()))
        shown = str(view.render())
        assert "lower the learning rate." in shown and 'bash({"command"' in shown
        assert "model replying step 9" in shown
        feed.push(f.make("usage", {"model": "claude-sonnet-4-5", "input_tokens": 10,
                                   "output_tokens": 5, "cost_usd": 0.001}, ts=NOW + 0.3))
        await until(pilot, lambda: not view.display)


def test_a_long_reply_keeps_only_its_tail_in_the_console() -> None:
    from mlrb_tui.state import MAX_LIVE_CHARS

    state = RunState("r1")
    f = EventFactory("r1")
    for i in range(200):
        part = "thinking" if i < 100 else "text"
        state.apply(f.make("agent.delta", {"step": 1, "part": part, "attempt": 1,
                                           "text": f"<{i:03d}>" + "x" * 495}))
    live = state.live
    assert live.chars == sum(len(p[2]) for p in live.parts) <= MAX_LIVE_CHARS
    assert live.text().endswith("<199>" + "x" * 495) and "<100>" not in live.text()
    assert [p[0] for p in live.parts] == ["text"]  # the thinking before it fell off the front
