"""Protected scorer for mini_pile: SuperGLUE by log-likelihood multiple choice.

Smoke scale: held-out toy-language choice items (scorer/data/superglue_smoke.jsonl), scored
with the same log-likelihood code lm-eval uses. Full scale: lm-eval's
`super-glue-lm-eval-v1` group.
Usage: python3 score.py --workspace DIR --scale smoke|full [--model SUBDIR]
"""

from __future__ import annotations

import argparse
from typing import Any

import scorelib as sl

METRIC = "superglue"


def score(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = sl.find_model(args.workspace, args.model)
    summary = sl.weights_summary(model_dir)
    details: dict[str, Any] = {"model": model_dir.name, "params": summary["params"],
                               "dtypes": summary["dtypes"], "scale": args.scale}
    if args.scale == "full":
        res = sl.lm_eval(model_dir, ["super-glue-lm-eval-v1"])
        subs = {k: float(v["acc,none"]) for k, v in res.items() if "acc,none" in v}
        if not subs:
            raise sl.ScoreError("lm-eval returned no SuperGLUE accuracies")
        value = sum(subs.values()) / len(subs)
        return sl.result(METRIC, value, {METRIC: value, **subs}, details)
    model, tok, _ = sl.load_model(model_dir)
    items = sl.read_jsonl(sl.data_file("superglue_smoke.jsonl"))
    acc = sl.choice_accuracy(model, tok, items)
    details["items"] = len(items)
    details["chance"] = 0.375  # half two-way agreement items, half four-way recall
    return sl.result(METRIC, acc["acc"], {METRIC: acc["acc"], "superglue_acc_norm": acc["acc_norm"]},
                     details)


if __name__ == "__main__":
    sl.main(METRIC, score)
