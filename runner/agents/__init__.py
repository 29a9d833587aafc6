"""LLM agents: Claude through the Anthropic Messages API, GPT through OpenAI Chat Completions.

`make_agent(kind, model, config)` builds one; keys and endpoints come from the providers'
environment variables (ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL, OPENAI_API_KEY /
OPENAI_BASE_URL), which win, else from `config` (the `[providers.<kind>]` table of the
config file, which may also name a default `model`); they are read on the host only. The
same table carries the run's model options: `stream` and `cache` (both on by default),
`thinking_budget` (Anthropic extended thinking, in tokens) and `reasoning_effort` (OpenAI
reasoning models). `scaffold` picks the loop around the model: "mlrb", the project's own
(one growing conversation), or "mlrb-paper", the paper's planner/worker loop
(`runner.agents.paper_agent`), which fixes its own max_tokens. The scripted baseline lives
in `runner.agents.base`.
"""

from __future__ import annotations

import os
from typing import Any

from runner.agents.base import Agent
from runner.agents.errors import AgentConfigError

DEFAULT_MODELS = {"anthropic": "claude-3-5-sonnet-20240620", "openai": "gpt-4o"}
_ENV = {"anthropic": {"api_key": "ANTHROPIC_API_KEY", "base_url": "ANTHROPIC_BASE_URL"},
        "openai": {"api_key": "OPENAI_API_KEY", "base_url": "OPENAI_BASE_URL"}}
OPTIONS = frozenset({"api_key", "base_url", "max_tokens", "context_window", "max_retries",
                     "timeout_s", "backoff_s", "max_backoff_s", "client", "stream", "cache"})
ONLY = {"anthropic": frozenset({"thinking_budget"}), "openai": frozenset({"reasoning_effort"})}


SCAFFOLDS = ("mlrb", "mlrb-paper")


def make_agent(kind: str, model: str | None = None, config: dict[str, Any] | None = None,
               scaffold: str = "mlrb") -> Agent:
    """An LLM agent of `kind` ("anthropic" | "openai") in `scaffold`; `model` defaults to the
    benchmark's."""
    if kind not in DEFAULT_MODELS:
        raise ValueError(f"unknown agent kind {kind!r}; LLM agents are: {', '.join(DEFAULT_MODELS)}"
                         " (the scripted baseline is built by the runner)")
    opts = dict(config or {})
    default_model = opts.pop("model", None)
    # As the config file promises, the provider's environment variables win over it.
    env = _ENV[kind]
    for opt, var in env.items():
        if os.environ.get(var):
            opts.pop(opt, None)
    known = OPTIONS | ONLY[kind]
    unknown = set(opts) - known
    if unknown:
        raise AgentConfigError(f"unknown option(s) for the {kind} agent: {', '.join(sorted(unknown))};"
                               f" known: {', '.join(sorted(known))}")
    if scaffold not in SCAFFOLDS:
        raise AgentConfigError(f"unknown scaffold {scaffold!r}; scaffolds are: {', '.join(SCAFFOLDS)}")
    name = model or default_model or DEFAULT_MODELS[kind]
    if scaffold == "mlrb-paper":
        from runner.agents.paper_agent import PaperAnthropicAgent, PaperOpenAIAgent

        return (PaperAnthropicAgent if kind == "anthropic" else PaperOpenAIAgent)(name, **opts)
    if kind == "anthropic":
        from runner.agents.anthropic_agent import AnthropicAgent

        return AnthropicAgent(name, **opts)
    from runner.agents.openai_agent import OpenAIAgent

    return OpenAIAgent(name, **opts)


__all__ = ["DEFAULT_MODELS", "SCAFFOLDS", "AgentConfigError", "make_agent"]
