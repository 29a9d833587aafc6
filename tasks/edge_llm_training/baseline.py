"""Scripted baseline for edge_llm_training: a small GPT-2-style model from scratch on C4,
saved in FP16 to stay well inside the DRAM budget."""

from __future__ import annotations

from typing import Any

from tasks.baseline_scripts import write_calls


def plan(scale: str) -> list[dict[str, Any]]:
    if scale == "full":
        train = ("python train_lm.py --data data/c4/train.txt --out model --steps 40000 "
                 "--d-model 768 --layers 12 --heads 12 --seq-len 256 --batch 64 --lr 6e-4 "
                 "--max-seconds 72000 --fp16")
    else:
        train = "python train_lm.py --data data/c4/train.txt --out model --steps 200 --fp16"
    return [
        *write_calls("mlrb_log.py", "word_tokenizer.py", "train_lm.py"),
        {"name": "bash", "args": {"command": train, "timeout_s": 600 if scale == "smoke" else 80000}},
        {"name": "submit", "args": {"path": "model", "summary": "small GPT-2-style model from scratch, FP16"}},
    ]
