"""Smoke-scale data for mini_pile: a MiniPile-shaped toy corpus (train and validation;
the test split is held out by the scorer). Usage: python prepare.py WORKSPACE"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tasks import toy_corpus  # noqa: E402


def main(workspace: Path) -> None:
    out = workspace / "data" / "minipile"
    out.mkdir(parents=True, exist_ok=True)
    # a "document" is a few sentences, as MiniPile rows are documents
    for split, n, seed in (("train", 6000, 11), ("validation", 500, 12)):
        sents = toy_corpus.sentences(n * 3, seed)
        docs = [" ".join(sents[i:i + 3]) for i in range(0, len(sents), 3)]
        (out / f"{split}.txt").write_text("\n".join(docs) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
