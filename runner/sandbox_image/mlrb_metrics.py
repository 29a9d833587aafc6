"""Training metrics for the MLRB console, from inside the sandbox.

    from mlrb_metrics import log
    log(step=3, loss=0.4, lr=1e-3)

Each call appends one JSON line {"ts", "step", "values"} to $MLRB_METRICS_FILE
(default /workspace/.mlrb/metrics.jsonl) and flushes it, so the runner sees it at once.
Logging never raises: a bad value is dropped and a failed write is ignored, because a
metrics helper must not stop a training run.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

__all__ = ["log", "metrics_file"]

DEFAULT_FILE = "/workspace/.mlrb/metrics.jsonl"


def metrics_file() -> str:
    return os.environ.get("MLRB_METRICS_FILE") or DEFAULT_FILE


def _number(value: Any) -> float | None:
    # Accepts ints, floats and one-element tensors/arrays (anything with .item() or __float__).
    try:
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, bool):
            return None
        number = float(value)
    except Exception:  # noqa: BLE001 - any unconvertible value is simply dropped
        return None
    return number if math.isfinite(number) else None


def log(values: dict[str, Any] | None = None, /, *, step: Any = None, **named: Any) -> bool:
    """Append one metrics line; returns False when nothing was written."""
    try:
        merged: dict[str, Any] = {}
        if isinstance(values, dict):
            merged.update(values)
        merged.update(named)
        clean: dict[str, float] = {}
        for key, value in merged.items():
            number = _number(value)
            if number is not None:
                clean[str(key)[:80]] = number
        if not clean:
            return False
        step_number = _number(step)
        line = json.dumps(
            {
                "ts": time.time(),
                "step": int(step_number) if step_number is not None else None,
                "values": clean,
            }
        )
        path = metrics_file()
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
        return True
    except Exception:  # noqa: BLE001 - never let metrics crash training
        return False
