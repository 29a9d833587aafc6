"""Smoke-scale inputs for llm_efficiency: a tiny Llama-architecture base model (built from a
config, briefly pretrained on the toy language) and Dolly-style instruction data.
Usage: python prepare.py WORKSPACE"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tasks import base_models, toy_corpus  # noqa: E402


def main(workspace: Path) -> None:
    tok = base_models.tokenizer()
    model = base_models.tiny("llama", tok, seed=0)
    base_models.pretrain(model, tok, toy_corpus.sentences(3000, 31), steps=40)
    base_models.save(model, tok, workspace / "base_model")
    dolly = workspace / "data" / "dolly"
    dolly.mkdir(parents=True, exist_ok=True)
    rows = toy_corpus.instruction_pairs()
    (dolly / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
