"""Cost and liveness figures of the LLM agents, against the stand-in server (tests/llm_server.py).

Cost with and without caching: a 200-turn MLRB-like conversation (a seeded script: files
written, commands run, and every ~15 turns a training command that keeps the agent waiting
10-40 minutes) is replayed through the real SDK three ways: no caching, caching with the
5-minute lifetime only, and caching with the lifetime the agent chooses. The agent's and the
server's clocks are moved on by each turn's wait, so an hour of waiting takes no time. It
prints the input tokens billed at full price, the cache reads and writes, and the cost at the
price table's prices (target: cached cost at most 30% of uncached).

Streaming latency: replies stream in small pieces; for each, the time from the server
sending the first token to that token in the console's run state and in the run view's
rendered text (the screen itself repaints at `console.repaint_hz`, 8 a second by default).

    python bench/caching.py [--turns 200] [--provider anthropic|openai|both] [--replies 40]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlrb_tui.state import RunState  # noqa: E402
from mlrb_tui.widgets.live_reply import render_live  # noqa: E402
from runner.agents import llm_agent, pricing  # noqa: E402
from runner.agents.anthropic_agent import AnthropicAgent  # noqa: E402
from runner.agents.base import AgentContext, Observation, ToolResult  # noqa: E402
from runner.agents.llm_agent import LLMAgent  # noqa: E402
from runner.agents.openai_agent import OpenAIAgent  # noqa: E402
from runner.events import EventFactory  # noqa: E402
from runner.tools import TOOL_SPECS  # noqa: E402
from tests.llm_server import Clock, LLMServer, Reply  # noqa: E402

MODELS = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-5"}
TASK = ("Fine-tune a small language model on the provided data so that it scores as high as "
        "possible on the held-out metric. " * 40)


def conversation(turns: int, seed: int = 7) -> list[dict[str, Any]]:
    """The scripted conversation: each turn's reply, its tool's output and the wait after it."""
    rng = random.Random(seed)
    out = []
    for i in range(turns):
        if i % 15 == 14:
            call = ("bash", {"command": f"python train.py --epochs {rng.randint(2, 6)}",
                             "timeout_s": 3600})
            wait = rng.uniform(600, 2400)
            output = "".join(f"epoch {e} step {s} loss {rng.random():.4f}\n"
                             for e in range(3) for s in range(0, 400, 20))
        elif i % 3 == 0:
            call = ("write_file", {"path": f"src/mod{i}.py",
                                   "content": "".join(f"def f{k}(x):\n    return x * {k}\n"
                                                      for k in range(rng.randint(5, 40)))})
            wait, output = rng.uniform(2, 8), "wrote the file"
        else:
            call = ("bash", {"command": f"python eval.py --split val --n {rng.randint(10, 500)}"})
            wait = rng.uniform(5, 90)
            output = "".join(f"sample {k}: ok {rng.random():.3f}\n" for k in range(rng.randint(5, 60)))
        text = f"Step {i}: " + " ".join(rng.choice(["checking", "the", "loss", "curve", "and",
                                                    "next", "trying", "a", "smaller", "rate"])
                                        for _ in range(rng.randint(8, 40)))
        out.append({"reply": Reply(text=text, calls=[call], chunk_chars=400), "wait": wait,
                    "output": output})
    return out


async def replay(provider: str, turns: int, mode: str) -> dict[str, float]:
    """The conversation through one agent; mode: off | 5m | chosen."""
    clock = Clock()
    usage: list[dict[str, Any]] = []

    async def emit(kind: str, data: dict[str, Any]) -> None:
        if kind == "usage":
            usage.append(data)

    chosen = llm_agent.choose_ttl
    if mode == "5m":
        llm_agent.choose_ttl = lambda now, last: "5m"  # type: ignore[assignment]
    try:
        with LLMServer() as srv:
            srv.clock = clock
            convo = conversation(turns)
            srv.script(*[t["reply"] for t in convo])
            agent: LLMAgent
            if provider == "anthropic":
                agent = AnthropicAgent(MODELS[provider], api_key="k", base_url=srv.url,
                                       cache=mode != "off", backoff_s=0.01)
            else:
                agent = OpenAIAgent(MODELS[provider], api_key="k", base_url=srv.openai_url,
                                    cache=mode != "off", backoff_s=0.01)
            agent.clock = clock
            await agent.start(AgentContext("bench", TASK, TOOL_SPECS, emit, 86_400))
            results: list[ToolResult] = []
            for i, t in enumerate(convo):
                turn = await agent.turn(Observation(i, 86_400 - clock.now % 86_400, results))
                results = [ToolResult(c.id, c.name, True, t["output"], 0, t["wait"]) for c in turn.calls]
                clock.now += t["wait"]
            await agent.close()
    finally:
        llm_agent.choose_ttl = chosen
    if provider == "openai" and mode == "off":
        # OpenAI caches whether asked or not: "without caching" is the same tokens at full price
        for u in usage:
            u["cost_usd"] = pricing.cost_usd(u["model"], u["input_tokens"], u["output_tokens"])[0]
            u["cache_read_tokens"] = 0
    return {"input": sum(u["input_tokens"] for u in usage),
            "read": sum(u["cache_read_tokens"] or 0 for u in usage),
            "write": sum(u["cache_write_tokens"] or 0 for u in usage),
            "cost": sum(u["cost_usd"] or 0.0 for u in usage), "calls": len(usage),
            "hours": sum(t["wait"] for t in conversation(turns)) / 3600}


async def latency(provider: str, replies: int) -> list[float]:
    """Seconds from the first token leaving the server to it in the rendered run view text."""
    state = RunState("bench")
    factory = EventFactory("bench")
    seen: dict[int, float] = {}

    async def emit(kind: str, data: dict[str, Any]) -> None:
        state.apply(factory.make(kind, data))
        if kind == "agent.delta" and data["step"] not in seen:
            render_live(state.live).plain  # noqa: B018 - what the run view draws
            seen[data["step"]] = time.monotonic()

    with LLMServer() as srv:
        srv.script(*[Reply(text="Looking at the loss curve before the next run. " * 6,
                           chunk_chars=4, chunk_delay_s=0.002) for _ in range(replies)])
        agent: LLMAgent = (AnthropicAgent(MODELS[provider], api_key="k", base_url=srv.url)
                           if provider == "anthropic" else
                           OpenAIAgent(MODELS[provider], api_key="k", base_url=srv.openai_url))
        await agent.start(AgentContext("bench", TASK, TOOL_SPECS, emit, 86_400))
        for i in range(replies):
            await agent.turn(Observation(i, 3600))
        await agent.close()
        out = []
        for i, rec in enumerate(srv.requests):
            if rec.first_token is not None and i in seen:
                out.append(seen[i] - rec.sent[rec.first_token])
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=200)
    ap.add_argument("--provider", choices=["anthropic", "openai", "both"], default="both")
    ap.add_argument("--replies", type=int, default=40)
    args = ap.parse_args()
    providers = ["anthropic", "openai"] if args.provider == "both" else [args.provider]
    print(f"prices of {pricing.PRICES_AS_OF}; {args.turns} turns, replayed against the stand-in")
    for provider in providers:
        rows = {mode: asyncio.run(replay(provider, args.turns, mode))
                for mode in (["off", "5m", "chosen"] if provider == "anthropic" else ["off", "chosen"])}
        base = rows["off"]["cost"]
        print(f"\n{provider} ({MODELS[provider]}), {rows['off']['hours']:.1f} h of the agent's time")
        print(f"  {'caching':<22}{'input tokens':>14}{'at full price':>15}{'cache read':>13}"
              f"{'cache write':>13}{'cost $':>10}{'of uncached':>13}")
        names = {"off": "none", "5m": "5-minute lifetime", "chosen": "lifetime chosen"}
        for mode, r in rows.items():
            full = r["input"] - r["read"] - r["write"]
            print(f"  {names[mode]:<22}{r['input']:>14,.0f}{full:>15,.0f}{r['read']:>13,.0f}"
                  f"{r['write']:>13,.0f}{r['cost']:>10.2f}{r['cost'] / base:>12.0%}")
        lat = asyncio.run(latency(provider, args.replies))
        lat_ms = sorted(x * 1000 for x in lat)
        print(f"  streaming: first token to the run view's text, {len(lat_ms)} replies: "
              f"p50 {statistics.median(lat_ms):.1f} ms, p95 {lat_ms[int(len(lat_ms) * 0.95) - 1]:.1f} ms,"
              f" max {lat_ms[-1]:.1f} ms")


if __name__ == "__main__":
    main()
