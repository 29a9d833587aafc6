"""Smoke-scale data for math_reasoning: a toy natural-language -> Lean 3 set.
Usage: python prepare.py WORKSPACE"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tasks import toy_corpus  # noqa: E402


def main(workspace: Path) -> None:
    out = workspace / "data" / "autoformalization"
    out.mkdir(parents=True, exist_ok=True)
    rows = toy_corpus.autoformalization(600, 5)
    (out / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
