"""Protected scorer for llm_efficiency: MMLU by log-likelihood multiple choice.

Smoke scale: held-out four-way questions about the toy world (scorer/data/mmlu_smoke.jsonl),
scored as lm-eval scores MMLU. Full scale: lm-eval's `mmlu` group (5-shot off, as in lm-eval's default).
Usage: python3 score.py --workspace DIR --scale smoke|full [--model SUBDIR]
"""

from __future__ import annotations

import argparse
from typing import Any

import scorelib as sl

METRIC = "mmlu"


def score(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = sl.find_model(args.workspace, args.model)
    summary = sl.weights_summary(model_dir)
    details: dict[str, Any] = {"model": model_dir.name, "params": summary["params"],
                               "dtypes": summary["dtypes"], "scale": args.scale}
    if args.scale == "full":
        value = sl.lm_eval_metric(sl.lm_eval(model_dir, ["mmlu"]), "mmlu")
        return sl.result(METRIC, value, {METRIC: value}, details)
    model, tok, _ = sl.load_model(model_dir)
    items = sl.read_jsonl(sl.data_file("mmlu_smoke.jsonl"))
    acc = sl.choice_accuracy(model, tok, items)
    metrics = {METRIC: acc["acc"], "mmlu_acc_norm": acc["acc_norm"]}
    for subject in sorted({it["subject"] for it in items}):
        metrics[f"mmlu_{subject}"] = sl.choice_accuracy(
            model, tok, [it for it in items if it["subject"] == subject])["acc"]
    details.update(items=len(items), chance=0.25)
    return sl.result(METRIC, acc["acc"], metrics, details)


if __name__ == "__main__":
    sl.main(METRIC, score)
