"""Smoke-scale inputs for llm_merging: a tiny Llama-architecture base and two LoRA experts of it
(one tuned on grammar, one on the toy world's facts, each cut to a rank-8 adapter by SVD and
saved in PEFT's format), and toy validation sets in upstream's shape.
Usage: python prepare.py WORKSPACE"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[1] / "starter"))
from llm_merging import lora  # noqa: E402

from tasks import base_models, toy_corpus  # noqa: E402

RANK = 8
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def adapter(base: object, tuned: object, dest: Path) -> None:
    modules = sorted(k.removesuffix(".weight") for k in tuned.state_dict()  # type: ignore[attr-defined]
                     if k.endswith(".weight") and k.split(".")[-2] in TARGETS)
    pairs = lora.extract(base.state_dict(), tuned.state_dict(), modules, RANK, 2.0 * RANK)  # type: ignore[attr-defined]
    lora.write_adapter(dest, {"r": RANK, "lora_alpha": 2 * RANK, "target_modules": list(TARGETS),
                              "base_model_name_or_path": "models/base", "task_type": "CAUSAL_LM",
                              "fan_in_fan_out": False, "bias": "none"}, pairs)


def main(workspace: Path) -> None:
    import copy

    tok = base_models.tokenizer()
    base = base_models.tiny("llama", tok, seed=0)
    base_models.pretrain(base, tok, toy_corpus.sentences(2000, 61), steps=25)
    base_models.save(base, tok, workspace / "models" / "base")
    grammar = copy.deepcopy(base)
    base_models.pretrain(grammar, tok, toy_corpus.sentences(2000, 62), steps=15, seed=1)
    adapter(base, grammar, workspace / "models" / "expert_a")
    knowledge = copy.deepcopy(base)
    facts = [toy_corpus.fact_sentence(c, a, v) for c, attrs in toy_corpus.facts().items()
             for a, v in attrs.items()]
    base_models.pretrain(knowledge, tok, facts * 10, steps=15, seed=2)
    adapter(base, knowledge, workspace / "models" / "expert_b")
    val = workspace / "data" / "validation"
    val.mkdir(parents=True, exist_ok=True)
    cosmos = [{"input": r["context"], "answer_choices": r["choices"], "label": r["label"],
               "target": r["choices"][r["label"]]} for r in toy_corpus.choice_items(100, 63)]
    (val / "cosmosqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cosmos))
    sents = toy_corpus.sentences(300, 64)
    xsum = [{"input": "summary : document : " + " ".join(sents[i:i + 3]), "target": sents[i]}
            for i in range(0, 300, 3)]
    (val / "xsum.jsonl").write_text("".join(json.dumps(r) + "\n" for r in xsum))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
