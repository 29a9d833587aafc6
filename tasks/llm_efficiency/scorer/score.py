"""Protected scorer for llm_efficiency: MMLU by log-likelihood multiple choice.

Smoke scale: held-out four-way questions about the toy world (scorer/data/mmlu_smoke.jsonl),
scored as lm-eval scores MMLU. Full scale: lm-eval's `mmlu` group (5-shot off, as in lm-eval's default).
Both: the submission must be of a base-model family the challenge approves (upstream's list, in
AlgorithmicResearchGroup/ML-Research-Agent-Tasks, mlrb_agent_tasks/prompts.py), told apart by
config.json's `model_type`; any other scores 0 with an error.
Usage: python3 score.py --workspace DIR --scale smoke|full [--model SUBDIR]
"""

from __future__ import annotations

import argparse
from typing import Any

import scorelib as sl

METRIC = "mmlu"

# upstream's approved family -> the `model_type` values transformers writes for it
APPROVED_FAMILIES: dict[str, tuple[str, ...]] = {
    "ALBERT": ("albert",), "BART": ("bart",), "BERT": ("bert",), "Bloom": ("bloom",),
    "Cerebras (btlm, GPT)": ("btlm", "gpt2"), "Colossal-LLaMA-2-7b-base": ("llama",),
    "DeBERTa": ("deberta", "deberta-v2"), "DeciLM-6B": ("deci", "decilm"),
    "DistilBERT": ("distilbert",), "Electra": ("electra",),
    "Falcon": ("falcon", "RefinedWeb", "RefinedWebModel"), "GPT2": ("gpt2",),
    "GPT Neo, J, NeoX, Pythia": ("gpt_neo", "gptj", "gpt_neox"), "InternLM": ("internlm", "internlm2"),
    "LLaMA or Llama 2": ("llama",), "Mistral": ("mistral",), "MPT": ("mpt",), "OpenLLaMA": ("llama",),
    "OPT": ("opt",), "Persimmon": ("persimmon",), "Qwen": ("qwen", "qwen2"),
    "Red Pajama Base": ("gpt_neox",), "RoBERTa": ("roberta",), "T5": ("t5",), "UL2": ("t5",),
}


def approved_family(model_type: object) -> str | None:
    """The approved families a `model_type` may belong to ("A / B"), or None."""
    found = [fam for fam, types in APPROVED_FAMILIES.items() if model_type in types]
    return " / ".join(found) or None


def score(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = sl.find_model(args.workspace, args.model)
    summary = sl.weights_summary(model_dir)
    model_type = sl.read_config(model_dir).get("model_type")
    family = approved_family(model_type)
    if family is None:
        raise sl.ScoreError(f"model_type {model_type!r} is not of an approved base-model family "
                            f"({', '.join(APPROVED_FAMILIES)})")
    details: dict[str, Any] = {"model": model_dir.name, "params": summary["params"],
                               "dtypes": summary["dtypes"], "scale": args.scale, "family": family}
    return sl.mmlu_result(METRIC, model_dir, args.scale, details, by_subject=True)


if __name__ == "__main__":
    sl.main(METRIC, score)
