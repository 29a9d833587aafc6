"""Scripted baseline for math_reasoning: a small T5-style seq2seq model trained on the set."""

from __future__ import annotations

from typing import Any

from tasks.baseline_scripts import write_calls


def plan(scale: str) -> list[dict[str, Any]]:
    steps = "250" if scale == "smoke" else "20000 --max-seconds 72000"
    return [
        *write_calls("mlrb_log.py", "word_tokenizer.py", "train_seq2seq.py"),
        {"name": "bash", "args": {"command": f"python train_seq2seq.py --data data/autoformalization/train.jsonl --out model --steps {steps}",
                                  "timeout_s": 600 if scale == "smoke" else 80000}},
        {"name": "submit", "args": {"path": "model", "summary": "small seq2seq model from English to Lean 3"}},
    ]
