"""Smoke-scale data for baby_lm: a small toy corpus, one sentence per line.
Usage: python prepare.py WORKSPACE"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tasks import toy_corpus  # noqa: E402


def main(workspace: Path) -> None:
    out = workspace / "data" / "babylm"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text("\n".join(toy_corpus.sentences(10000, 21)) + "\n")
    (out / "dev.txt").write_text("\n".join(toy_corpus.sentences(500, 22)) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
