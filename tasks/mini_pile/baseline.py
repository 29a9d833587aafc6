"""Scripted baseline for mini_pile: a small GPT-2-style model pretrained from scratch."""

from __future__ import annotations

from typing import Any

from tasks.baseline_scripts import write_calls

SCRIPTS = ("mlrb_log.py", "word_tokenizer.py", "train_lm.py")


def plan(scale: str) -> list[dict[str, Any]]:
    if scale == "full":
        data = "python full_data.py minipile && "
        train = ("python train_lm.py --data data/minipile/train.txt --out model --steps 20000 "
                 "--d-model 512 --layers 8 --heads 8 --seq-len 256 --batch 64 --lr 6e-4 "
                 "--max-seconds 72000")
        extra = [{"name": "write_file", "args": {"path": "full_data.py", "content": _full_data()}}]
    else:
        data = ""
        train = "python train_lm.py --data data/minipile/train.txt --out model --steps 250"
        extra = []
    return [
        *write_calls(*SCRIPTS),
        *extra,
        {"name": "bash", "args": {"command": data + train, "timeout_s": 600 if scale == "smoke" else 80000}},
        {"name": "submit", "args": {"path": "model",
                                    "summary": "GPT-2-style model pretrained from scratch on MiniPile"}},
    ]


def _full_data() -> str:
    from pathlib import Path

    return (Path(__file__).resolve().parent / "full" / "full_data.py").read_text()
