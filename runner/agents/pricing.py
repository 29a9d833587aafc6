"""Prices and context windows of the models the benchmark runs, for `usage` events.

The table holds list prices as of `PRICES_AS_OF`, in US dollars per million tokens: input,
output, cache read, and cache write for each cache lifetime (Anthropic bills a 5-minute
write at 1.25x input and a 1-hour write at 2x, a read at 0.1x; OpenAI caches on its own,
bills no write and reads at its cached-input price). Batch discounts and long-context tiers
are not modelled. A model id matches its exact entry, else the longest entry it extends
with a dash (so `gpt-4o-2024-11-20` is priced as `gpt-4o`, `claude-sonnet-4-5-20250929` as
`claude-sonnet-4-5`). An unknown model has no price: its cost is `None` (null in events),
never a silent zero, and the agent warns once.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_AS_OF = "2025-11-24"  # the date these list prices were read from the providers' pages


@dataclass(frozen=True)
class ModelInfo:
    input_per_mtok: float
    output_per_mtok: float
    context_window: int
    cache_read_per_mtok: float | None = None  # None: as input
    cache_write_per_mtok: float | None = None  # a 5-minute write; None: as input
    cache_write_1h_per_mtok: float | None = None  # a 1-hour write; None: as the 5-minute one

    @property
    def read(self) -> float:
        return self.input_per_mtok if self.cache_read_per_mtok is None else self.cache_read_per_mtok

    def write(self, ttl: str = "5m") -> float:
        five = self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        if ttl == "1h" and self.cache_write_1h_per_mtok is not None:
            return self.cache_write_1h_per_mtok
        return five


def _claude(inp: float, out: float, window: int = 200_000) -> ModelInfo:
    return ModelInfo(inp, out, window, round(inp * 0.1, 6), round(inp * 1.25, 6), round(inp * 2, 6))


def _gpt(inp: float, out: float, window: int, cached: float | None) -> ModelInfo:
    return ModelInfo(inp, out, window, cached, None, None)


PRICES: dict[str, ModelInfo] = {
    # Anthropic
    "claude-3-haiku": _claude(0.25, 1.25),
    "claude-3-opus": _claude(15.0, 75.0),
    "claude-3-5-haiku": _claude(0.80, 4.0),
    "claude-3-5-sonnet": _claude(3.0, 15.0),
    "claude-3-7-sonnet": _claude(3.0, 15.0),
    "claude-sonnet-4": _claude(3.0, 15.0),
    "claude-sonnet-4-5": _claude(3.0, 15.0),
    "claude-opus-4": _claude(15.0, 75.0),
    "claude-opus-4-1": _claude(15.0, 75.0),
    "claude-opus-4-5": _claude(5.0, 25.0),
    "claude-haiku-4-5": _claude(1.0, 5.0),
    # OpenAI
    "gpt-4-turbo": _gpt(10.0, 30.0, 128_000, None),
    "gpt-4o": _gpt(2.50, 10.0, 128_000, 1.25),
    "gpt-4o-2024-05-13": _gpt(5.0, 15.0, 128_000, None),
    "gpt-4o-mini": _gpt(0.15, 0.60, 128_000, 0.075),
    "gpt-4.1": _gpt(2.0, 8.0, 1_047_576, 0.50),
    "gpt-4.1-mini": _gpt(0.40, 1.60, 1_047_576, 0.10),
    "gpt-4.1-nano": _gpt(0.10, 0.40, 1_047_576, 0.025),
    "o1": _gpt(15.0, 60.0, 200_000, 7.50),
    "o1-preview": _gpt(15.0, 60.0, 128_000, 7.50),
    "o1-mini": _gpt(1.10, 4.40, 128_000, 0.55),
    "o3": _gpt(2.0, 8.0, 200_000, 0.50),
    "o3-mini": _gpt(1.10, 4.40, 200_000, 0.55),
    "o4-mini": _gpt(1.10, 4.40, 200_000, 0.275),
    "gpt-5": _gpt(1.25, 10.0, 400_000, 0.125),
    "gpt-5-mini": _gpt(0.25, 2.0, 400_000, 0.025),
    "gpt-5-nano": _gpt(0.05, 0.40, 400_000, 0.005),
    "gpt-5.1": _gpt(1.25, 10.0, 400_000, 0.125),
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


def cost_usd(model: str, input_tokens: int, output_tokens: int, *, cache_read: int = 0,
             cache_write: int = 0, ttl: str = "5m") -> tuple[float | None, bool]:
    """(cost in dollars, whether the model has a price); the cost is None without a price.

    `input_tokens` counts every prompt token, `cache_read` and `cache_write` the parts of
    them read from and written to the provider's cache (written for `ttl`).
    """
    info = lookup(model)
    if info is None:
        return None, False
    plain = max(input_tokens - cache_read - cache_write, 0)
    cost = (plain * info.input_per_mtok + cache_read * info.read
            + cache_write * info.write(ttl) + output_tokens * info.output_per_mtok) / 1e6
    return round(cost, 8), True


def context_window(model: str) -> int:
    info = lookup(model)
    return info.context_window if info else DEFAULT_CONTEXT_WINDOW
