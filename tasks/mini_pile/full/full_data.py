"""Full scale (GPU host with the Hugging Face hub reachable): dump MiniPile to text files,
one document per line, for the baseline's trainer. Usage: python full_data.py minipile"""

from __future__ import annotations

import sys
from pathlib import Path

from datasets import load_dataset


def main() -> None:
    out = Path("data/minipile")
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset("JeanKaddour/minipile")
    for split in ("train", "validation"):
        with (out / f"{split}.txt").open("w") as f:
            for row in ds[split]:
                f.write(" ".join(row["text"].split()) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["minipile"]:
        sys.exit("usage: python full_data.py minipile")
    main()
