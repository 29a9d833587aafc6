"""A run's budget: its limits, its clock, what it has used, and the checks that warn at 80%
and end the run at 100%.

The clock counts only time on the budget: it stops while the run is held or frozen, while a
tool call waits for approval, and while the submission is scored.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from runner.control import LimitName
from runner.event_data import UsageData

WARN_FRACTION = 0.8


@dataclass
class RunLimits:
    time_s: float
    steps: int | None = None
    tokens: int | None = None
    cost_usd: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class RunClock:
    """Time on the run's budget: stops while held, frozen, waiting for approval or scoring."""

    used: float = 0.0
    since: float | None = None
    stops: set[str] = field(default_factory=set)

    def start(self) -> None:
        if self.since is None and not self.stops:
            self.since = time.monotonic()

    def stop(self, why: str) -> None:
        self.stops.add(why)
        if self.since is not None:
            self.used += time.monotonic() - self.since
            self.since = None

    def release(self, why: str) -> None:
        self.stops.discard(why)
        if not self.stops and self.since is None:
            self.since = time.monotonic()

    @property
    def elapsed(self) -> float:
        return self.used + (time.monotonic() - self.since if self.since is not None else 0.0)


@dataclass(frozen=True)
class LimitCrossing:
    """A limit warned about or reached: the `run.limit` event, and what follows from it."""

    name: str
    level: str  # "warning" | "reached"
    data: dict[str, Any]  # the run.limit event's data
    reason: str = ""  # why the run ends, when reached
    notice: str = ""  # what the agent is told at its next turn, when warned

    @property
    def reached(self) -> bool:
        return self.level == "reached"


class Budget:
    """The limits, the clock and the usage counted against them."""

    def __init__(self, limits: RunLimits) -> None:
        self.limits = limits
        self.clock = RunClock()
        self.steps = 0
        self.tokens = 0
        self.cost = 0.0
        self._warned: set[str] = set()

    def restore(self, limits: RunLimits, *, steps: int, tokens: int, cost: float,
                warned: set[str]) -> None:
        """What an adopted run had used and been warned of, from its journal."""
        self.limits = limits
        self.steps, self.tokens, self.cost = steps, tokens, cost
        self._warned = set(warned)

    def count_usage(self, usage: UsageData) -> None:
        """Tokens and cost from one `usage` event."""
        # Cached prompt tokens still count: a token limit bounds what the model read.
        self.tokens += usage.input_tokens + usage.output_tokens
        self.cost += usage.cost_usd or 0.0  # unpriced: warned of by the agent, not counted

    @property
    def time_left(self) -> float:
        return max(0.0, self.limits.time_s - self.clock.elapsed)

    def set_limit(self, name: LimitName, value: float) -> None:
        setattr(self.limits, name, int(value) if name in ("steps", "tokens") else value)
        self._warned.discard(name)  # a raised limit may warn again

    def check(self) -> list[LimitCrossing]:
        """Limits crossed since the last check, in order; a reached one is last, as it ends the run."""
        checks = [("time_s", self.clock.elapsed, self.limits.time_s),
                  ("steps", float(self.steps), self.limits.steps),
                  ("tokens", float(self.tokens), self.limits.tokens),
                  ("cost_usd", self.cost, self.limits.cost_usd)]
        out: list[LimitCrossing] = []
        for name, used, limit in checks:
            if not limit:
                continue
            frac = used / limit
            data = {"limit": name, "used": round(used, 4), "max": limit,
                    "fraction": round(frac, 3)}
            if frac >= 1.0:
                out.append(LimitCrossing(name, "reached", {**data, "level": "reached"},
                                         reason=f"{name} limit reached ({used:g} of {limit:g})"))
                return out
            if frac >= WARN_FRACTION and name not in self._warned:
                self._warned.add(name)
                out.append(LimitCrossing(
                    name, "warning", {**data, "level": "warning"},
                    notice=f"Warning: you have used {frac:.0%} of your {name} limit."))
        return out

    def time_ran_out(self) -> LimitCrossing | None:
        """The time limit reached between steps (in the middle of a tool call), else None."""
        limit = self.limits.time_s
        elapsed = self.clock.elapsed
        if not limit or elapsed < limit:
            return None
        return LimitCrossing("time_s", "reached",
                             {"limit": "time_s", "used": round(elapsed, 1), "max": limit,
                              "fraction": 1.0, "level": "reached"},
                             reason=f"time_s limit reached ({limit:g} s)")
