"""Training metrics for the MLRB console: `from mlrb_log import log; log(step=i, loss=x)`.

Inside the sandbox image the `mlrb_metrics` helper appends to $MLRB_METRICS_FILE; where it
is not installed (a local run) this writes the same JSON lines itself when the variable is
set, and otherwise prints a Hugging Face Trainer-style dict line the runner also reads.
"""

from __future__ import annotations

import json
import os
import time

try:
    from mlrb_metrics import log as _helper_log
except ImportError:
    _helper_log = None


def log(step: int | None = None, **values: float) -> None:
    if _helper_log is not None:
        _helper_log(step=step, **values)
        return
    path = os.environ.get("MLRB_METRICS_FILE")
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, "values": values, "ts": time.time()}) + "\n")
    print({**{k: round(float(v), 6) for k, v in values.items()}, "step": step}, flush=True)
