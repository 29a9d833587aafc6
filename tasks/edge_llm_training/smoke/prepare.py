"""Smoke-scale data for edge_llm_training: C4- and Alpaca-shaped toy data.
Usage: python prepare.py WORKSPACE"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tasks import toy_corpus  # noqa: E402


def main(workspace: Path) -> None:
    c4 = workspace / "data" / "c4"
    c4.mkdir(parents=True, exist_ok=True)
    sents = toy_corpus.sentences(15000, 41)
    (c4 / "train.txt").write_text("\n".join(" ".join(sents[i:i + 3]) for i in range(0, len(sents), 3)) + "\n")
    alpaca = workspace / "data" / "alpaca"
    alpaca.mkdir(parents=True, exist_ok=True)
    rows = [{"instruction": p["instruction"], "input": "", "output": p["response"]}
            for p in toy_corpus.instruction_pairs()]
    (alpaca / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
