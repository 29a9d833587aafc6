"""The history trimming policy, the wire rendering built on it, and the price table."""

from __future__ import annotations

import pytest

from runner.agents import make_agent
from runner.agents.anthropic_agent import render_messages as anthropic_messages
from runner.agents.errors import AgentConfigError
from runner.agents.history import (
    CallRecord,
    Exchange,
    History,
    ResultRecord,
    Trailer,
    estimate_tokens,
    history_chars,
    trim,
)
from runner.agents.openai_agent import render_messages as openai_messages
from runner.agents.pricing import context_window, cost_usd
from tests.llm_server import check_anthropic, check_openai


def _history(n: int, output_chars: int = 2000, calls_per_step: int = 2) -> History:
    h = History(opening="Begin.", opening_trailer=Trailer(time_left="You have 2 hours 0 minutes left."))
    for i in range(n):
        calls = [CallRecord(f"c{i}_{j}", "write_file", {"path": f"f{i}.py", "content": "x" * 900})
                 for j in range(calls_per_step)]
        results = [ResultRecord(c.id, c.name, j % 2 == 0, f"out{i}:" + "y" * output_chars)
                   for j, c in enumerate(calls)]
        h.exchanges.append(Exchange(text=f"step {i}", calls=calls, results=results,
                                    trailer=Trailer(notes=[f"note {i}"], time_left="t")))
    return h


def _ids(h: History) -> list[str]:
    return [c.id for ex in h.exchanges for c in ex.calls]


def _paired(h: History) -> bool:
    return all(ex.results is not None and [r.call_id for r in ex.results] == [c.id for c in ex.calls]
               for ex in h.exchanges)


def test_under_the_high_water_mark_nothing_changes() -> None:
    h = _history(5)
    before = history_chars(h)
    budget = estimate_tokens(before) * 2
    report = trim(h, budget_tokens=budget)
    assert not report.changed
    assert history_chars(h) == before
    assert len(h.exchanges) == 5


def test_old_outputs_are_elided_before_any_step_is_dropped() -> None:
    h = _history(20)
    full = estimate_tokens(history_chars(h))
    # Eliding the 14 old steps frees most of the text, so nothing needs to be dropped.
    report = trim(h, budget_tokens=int(full * 0.9), keep_last=6)
    assert report.elided > 0 and report.dropped == 0
    assert report.after_tokens <= int(full * 0.9) * 0.6
    assert len(h.exchanges) == 20
    stubbed = [r.output for r in h.exchanges[0].results or []]
    assert stubbed == ["[output elided: 2005 chars]"] * 2
    assert h.exchanges[0].calls[0].wire_args == {"path": "f0.py", "content": "[elided: 900 chars]"}
    # The last six steps keep their outputs whole.
    assert all(r.output.startswith("out") for ex in h.exchanges[-6:] for r in ex.results or [])
    assert _paired(h)


def test_oldest_steps_are_dropped_whole_and_the_opening_says_so() -> None:
    h = _history(20)
    ids = _ids(h)
    report = trim(h, budget_tokens=6000, keep_last=6)
    assert report.dropped > 0
    assert h.dropped == report.dropped
    assert len(h.exchanges) == 20 - report.dropped
    assert _ids(h) == ids[2 * report.dropped:]  # a suffix of the calls, whole steps only
    assert _paired(h)
    assert f"{report.dropped} earlier steps were removed" in h.opening_text()
    assert report.after_tokens <= 6000 * 0.6
    # Both providers accept the trimmed conversation: no orphan call or result.
    assert check_anthropic({"max_tokens": 10, "messages": anthropic_messages(h)}) == ""
    assert check_openai({"messages": openai_messages("sys", h)}) == ""


def test_the_newest_step_is_kept_and_cut_when_it_alone_is_too_big() -> None:
    h = _history(3, output_chars=50_000, calls_per_step=1)
    report = trim(h, budget_tokens=4000)
    assert len(h.exchanges) == 1 and h.exchanges[0].calls[0].id == "c2_0"
    assert report.truncated == 1
    out = (h.exchanges[0].results or [])[0].output
    assert "chars cut" in out and out.startswith("out2:") and len(out) < 50_000
    assert _paired(h)


def test_pending_step_without_results_is_rendered_last() -> None:
    h = _history(2)
    h.exchanges.append(Exchange(text="", calls=[CallRecord("p1", "bash", '{"command": "ls"}')]))
    msgs = openai_messages("sys", h)
    assert msgs[-1]["tool_calls"][0]["function"]["arguments"] == '{"command": "ls"}'
    a = anthropic_messages(h)
    assert a[-1]["role"] == "assistant" and a[-1]["content"][0]["type"] == "tool_use"


def test_prices_and_windows() -> None:
    assert cost_usd("claude-3-5-sonnet-20240620", 1_000_000, 1_000_000) == (18.0, True)
    assert cost_usd("gpt-4o-2024-11-20", 2_000_000, 0) == (5.0, True)
    assert cost_usd("gpt-4o-mini-2024-07-18", 1_000_000, 1_000_000) == (0.75, True)
    assert cost_usd("claude-3-opus-20240229", 0, 1000)[0] == pytest.approx(0.075)
    assert cost_usd("o1-2024-12-17", 1000, 1000)[0] == pytest.approx(0.075)
    assert cost_usd("my-local-llama", 10, 10) == (None, False)
    assert context_window("claude-3-haiku-20240307") == 200_000
    assert context_window("my-local-llama") == 128_000


def test_make_agent_errors_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="unknown agent kind 'gemini'"):
        make_agent("gemini", None)
    with pytest.raises(AgentConfigError, match="ANTHROPIC_API_KEY is not set"):
        make_agent("anthropic", None)
    with pytest.raises(AgentConfigError, match="OPENAI_API_KEY is not set"):
        make_agent("openai", "gpt-4o-mini")
    with pytest.raises(AgentConfigError, match="unknown option.*temprature"):
        make_agent("openai", None, {"api_key": "k", "temprature": 0})
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    agent = make_agent("openai", None)
    assert (agent.name, agent.model) == ("openai", "gpt-4o")
    agent = make_agent("anthropic", None, {"api_key": "k"})
    assert (agent.name, agent.model) == ("anthropic", "claude-3-5-sonnet-20240620")
    # The config may name a default model; the environment wins over the config's endpoint.
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    agent = make_agent("openai", None, {"model": "gpt-4o-mini", "base_url": "http://elsewhere/v1"})
    assert agent.model == "gpt-4o-mini"
    assert str(agent.client.base_url).startswith("http://127.0.0.1:9/v1")  # type: ignore[attr-defined]
