"""The smoke-scale held-out sets in each `scorer/data/`, regenerated from the toy language.

The files are committed (the scorer reads them where nothing else of ours is mounted);
this module says how they were made, and a test checks they still match.
Usage: python -m tasks.heldout  (rewrites every file)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks import toy_corpus as toy

TASKS_ROOT = Path(__file__).resolve().parent

# task -> file name -> rows; seeds differ from every prepare script's seeds
SETS: dict[str, dict[str, Callable[[], list[dict[str, Any]]]]] = {
    "mini_pile": {"superglue_smoke.jsonl": lambda: toy.choice_items(300, 777)},
    "edge_llm_training": {"superglue_smoke.jsonl": lambda: toy.choice_items(300, 778)},
    "baby_lm": {"blimp_smoke.jsonl": lambda: toy.minimal_pairs(300, 501)},
    "llm_efficiency": {"mmlu_smoke.jsonl": toy.knowledge_items},
    "llm_merging": {"mmlu_smoke.jsonl": toy.knowledge_items},
    "edge_llm_compression": {"mmlu_smoke.jsonl": toy.knowledge_items},
    "math_reasoning": {"autoformalization_smoke.jsonl": lambda: toy.autoformalization(40, 909)},
}


def render(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def expected(task: str) -> dict[Path, str]:
    base = TASKS_ROOT / task / "scorer" / "data"
    return {base / name: render(make()) for name, make in SETS.get(task, {}).items()}


def write_all() -> None:
    for task in SETS:
        for path, text in expected(task).items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


if __name__ == "__main__":
    write_all()
