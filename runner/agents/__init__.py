"""LLM agents: Claude through the Anthropic Messages API, GPT through OpenAI Chat Completions.

`make_agent(kind, model, config)` builds one; keys and endpoints come from `config`, else the
providers' environment variables (ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL, OPENAI_API_KEY /
OPENAI_BASE_URL), read on the host only. The scripted baseline lives in `runner.agent`.
"""

from __future__ import annotations

from typing import Any

from runner.agent import Agent
from runner.agents.errors import AgentConfigError

DEFAULT_MODELS = {"anthropic": "claude-3-5-sonnet-20240620", "openai": "gpt-4o"}
OPTIONS = frozenset({"api_key", "base_url", "max_tokens", "context_window", "max_retries",
                     "timeout_s", "backoff_s", "max_backoff_s", "client"})


def make_agent(kind: str, model: str | None = None, config: dict[str, Any] | None = None) -> Agent:
    """An LLM agent of `kind` ("anthropic" | "openai"); `model` defaults to the benchmark's."""
    if kind not in DEFAULT_MODELS:
        raise ValueError(f"unknown agent kind {kind!r}; LLM agents are: {', '.join(DEFAULT_MODELS)}"
                         " (the scripted baseline is built by the runner)")
    opts = dict(config or {})
    unknown = set(opts) - OPTIONS
    if unknown:
        raise AgentConfigError(f"unknown option(s) for the {kind} agent: {', '.join(sorted(unknown))};"
                               f" known: {', '.join(sorted(OPTIONS))}")
    name = model or DEFAULT_MODELS[kind]
    if kind == "anthropic":
        from runner.agents.anthropic_agent import AnthropicAgent

        return AnthropicAgent(name, **opts)
    from runner.agents.openai_agent import OpenAIAgent

    return OpenAIAgent(name, **opts)


__all__ = ["DEFAULT_MODELS", "AgentConfigError", "make_agent"]
