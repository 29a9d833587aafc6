"""Smoke-scale inputs for llm_merging: two tiny Llama-architecture experts fine-tuned from
one base (one on grammar, one on the toy world's facts) and toy validation sets.
Usage: python prepare.py WORKSPACE"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tasks import base_models, toy_corpus  # noqa: E402


def main(workspace: Path) -> None:
    import copy

    tok = base_models.tokenizer()
    base = base_models.tiny("llama", tok, seed=0)
    base_models.pretrain(base, tok, toy_corpus.sentences(2000, 61), steps=25)
    grammar = copy.deepcopy(base)
    base_models.pretrain(grammar, tok, toy_corpus.sentences(2000, 62), steps=15, seed=1)
    base_models.save(grammar, tok, workspace / "models" / "expert_a")
    knowledge = copy.deepcopy(base)
    facts = [toy_corpus.fact_sentence(c, a, v) for c, attrs in toy_corpus.facts().items()
             for a, v in attrs.items()]
    base_models.pretrain(knowledge, tok, facts * 10, steps=15, seed=2)
    base_models.save(knowledge, tok, workspace / "models" / "expert_b")
    val = workspace / "data" / "validation"
    val.mkdir(parents=True, exist_ok=True)
    (val / "cosmosqa.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in toy_corpus.choice_items(100, 63)))
    sents = toy_corpus.sentences(300, 64)
    xsum = [{"document": " ".join(sents[i:i + 3]), "summary": sents[i]} for i in range(0, 300, 3)]
    (val / "xsum.jsonl").write_text("".join(json.dumps(r) + "\n" for r in xsum))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
