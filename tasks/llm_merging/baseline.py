"""Scripted baseline for llm_merging: uniform parameter averaging through the scaffold."""

from __future__ import annotations

from typing import Any

from tasks.baseline_scripts import write_calls


def plan(scale: str) -> list[dict[str, Any]]:
    models = "models/expert_a models/expert_b"
    return [
        *write_calls("mlrb_log.py"),
        {"name": "bash", "args": {"command": f"python merge.py --method llama_average --models {models} --out model",
                                  "timeout_s": 600 if scale == "smoke" else 3600}},
        {"name": "submit", "args": {"path": "model", "summary": "uniform average of the two experts"}},
    ]
