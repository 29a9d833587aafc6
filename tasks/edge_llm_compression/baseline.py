"""Scripted baseline for edge_llm_compression: structured magnitude pruning of the MLPs."""

from __future__ import annotations

from typing import Any

from tasks.baseline_scripts import write_calls


def plan(scale: str) -> list[dict[str, Any]]:
    keep = "0.5" if scale == "smoke" else "0.7 --fp16"
    return [
        *write_calls("mlrb_log.py", "prune.py"),
        {"name": "bash", "args": {"command": f"python prune.py --base base_model --out model --keep {keep}",
                                  "timeout_s": 600 if scale == "smoke" else 7200}},
        {"name": "submit", "args": {"path": "model", "summary": "phi with half its MLP neurons pruned by magnitude"}},
    ]
