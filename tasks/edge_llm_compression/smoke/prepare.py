"""Smoke-scale input for edge_llm_compression: a tiny phi-architecture model built from a
config and briefly pretrained on the toy language (facts included), saved in FP32.
Usage: python prepare.py WORKSPACE"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tasks import base_models, toy_corpus  # noqa: E402


def main(workspace: Path) -> None:
    tok = base_models.tokenizer()
    model = base_models.tiny("phi", tok, seed=0)
    texts = toy_corpus.sentences(3000, 51)
    for c, attrs in toy_corpus.facts().items():
        texts += [toy_corpus.fact_sentence(c, a, v) for a, v in attrs.items()] * 4
    base_models.pretrain(model, tok, texts, steps=60)
    base_models.save(model, tok, workspace / "base_model")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
