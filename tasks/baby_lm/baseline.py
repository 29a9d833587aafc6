"""Scripted baseline for baby_lm: a small GPT-2-style model trained from scratch."""

from __future__ import annotations

from typing import Any

from tasks.baseline_scripts import write_calls


def plan(scale: str) -> list[dict[str, Any]]:
    if scale == "full":
        train = ("python train_lm.py --data data/babylm/train.txt --out model --steps 30000 "
                 "--d-model 512 --layers 8 --heads 8 --seq-len 128 --batch 64 --lr 6e-4 "
                 "--max-seconds 72000")
    else:
        train = "python train_lm.py --data data/babylm/train.txt --out model --steps 200"
    return [
        *write_calls("mlrb_log.py", "word_tokenizer.py", "train_lm.py"),
        {"name": "bash", "args": {"command": train, "timeout_s": 600 if scale == "smoke" else 80000}},
        {"name": "submit", "args": {"path": "model", "summary": "GPT-2-style model trained from scratch on the BabyLM corpus"}},
    ]
