"""Prices and context windows of the models the benchmark runs, for `usage` events.

Prices are US dollars per million tokens (input, output), list prices without batch or
cache discounts. A model id matches its exact entry, else the longest entry it extends
with a dash (so `gpt-4o-2024-11-20` is priced as `gpt-4o`, `gpt-4o-mini-2024-07-18` as
`gpt-4o-mini`). An unknown model costs 0 and is reported with `priced: false`, so a
missing price is visible rather than silently wrong.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelInfo:
    input_per_mtok: float
    output_per_mtok: float
    context_window: int


PRICES: dict[str, ModelInfo] = {
    # Anthropic
    "claude-3-5-sonnet": ModelInfo(3.0, 15.0, 200_000),
    "claude-3-7-sonnet": ModelInfo(3.0, 15.0, 200_000),
    "claude-sonnet-4": ModelInfo(3.0, 15.0, 200_000),
    "claude-sonnet-4-5": ModelInfo(3.0, 15.0, 200_000),
    "claude-3-opus": ModelInfo(15.0, 75.0, 200_000),
    "claude-opus-4": ModelInfo(15.0, 75.0, 200_000),
    "claude-opus-4-1": ModelInfo(15.0, 75.0, 200_000),
    "claude-opus-4-5": ModelInfo(5.0, 25.0, 200_000),
    "claude-3-haiku": ModelInfo(0.25, 1.25, 200_000),
    "claude-3-5-haiku": ModelInfo(0.80, 4.0, 200_000),
    "claude-haiku-4-5": ModelInfo(1.0, 5.0, 200_000),
    # OpenAI
    "gpt-4o": ModelInfo(2.50, 10.0, 128_000),
    "gpt-4o-2024-05-13": ModelInfo(5.0, 15.0, 128_000),
    "gpt-4o-mini": ModelInfo(0.15, 0.60, 128_000),
    "gpt-4-turbo": ModelInfo(10.0, 30.0, 128_000),
    "gpt-4.1": ModelInfo(2.0, 8.0, 1_047_576),
    "gpt-4.1-mini": ModelInfo(0.40, 1.60, 1_047_576),
    "gpt-4.1-nano": ModelInfo(0.10, 0.40, 1_047_576),
    "o1": ModelInfo(15.0, 60.0, 200_000),
    "o1-preview": ModelInfo(15.0, 60.0, 128_000),
    "o1-mini": ModelInfo(1.10, 4.40, 128_000),
    "o3": ModelInfo(2.0, 8.0, 200_000),
    "o3-mini": ModelInfo(1.10, 4.40, 200_000),
    "o4-mini": ModelInfo(1.10, 4.40, 200_000),
    "gpt-5": ModelInfo(1.25, 10.0, 400_000),
    "gpt-5-mini": ModelInfo(0.25, 2.0, 400_000),
    "gpt-5-nano": ModelInfo(0.05, 0.40, 400_000),
}

DEFAULT_CONTEXT_WINDOW = 128_000


def lookup(model: str) -> ModelInfo | None:
    """The entry for a model id: exact, else the longest entry it extends with a dash."""
    if model in PRICES:
        return PRICES[model]
    best = ""
    for key in PRICES:
        if model.startswith(key + "-") and len(key) > len(best):
            best = key
    return PRICES[best] if best else None


def cost_usd(model: str, input_tokens: int, output_tokens: int) -> tuple[float, bool]:
    """(cost in dollars, whether the model has a price)."""
    info = lookup(model)
    if info is None:
        return 0.0, False
    cost = (input_tokens * info.input_per_mtok + output_tokens * info.output_per_mtok) / 1e6
    return round(cost, 8), True


def context_window(model: str) -> int:
    info = lookup(model)
    return info.context_window if info else DEFAULT_CONTEXT_WINDOW
