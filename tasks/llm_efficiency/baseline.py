"""Scripted baseline for llm_efficiency: a short full fine-tune of the base model on the
instruction data."""

from __future__ import annotations

from typing import Any

from tasks.baseline_scripts import write_calls


def plan(scale: str) -> list[dict[str, Any]]:
    if scale == "full":
        cmd = ("python full_prepare.py && python finetune.py --base base_model --data "
               "data/dolly/train.jsonl --out model --steps 3000 --batch 8 --lr 2e-5 --max-seconds 72000")
        extra = [{"name": "write_file", "args": {"path": "full_prepare.py", "content": _full("full_prepare.py")}}]
    else:
        cmd = "python finetune.py --base base_model --data data/dolly/train.jsonl --out model --steps 120"
        extra = []
    return [
        *write_calls("mlrb_log.py", "finetune.py"),
        *extra,
        {"name": "bash", "args": {"command": cmd, "timeout_s": 600 if scale == "smoke" else 80000}},
        {"name": "submit", "args": {"path": "model", "summary": "base model fine-tuned on instruction data"}},
    ]


def _full(name: str) -> str:
    from pathlib import Path

    return (Path(__file__).resolve().parent / "full" / name).read_text()
