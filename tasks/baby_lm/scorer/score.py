"""Protected scorer for baby_lm: BLiMP minimal-pair accuracy.

Smoke scale: held-out toy-language minimal pairs (scorer/data/blimp_smoke.jsonl), a pair
counts when log P(good) > log P(bad). Full scale: lm-eval's `blimp` group.
Usage: python3 score.py --workspace DIR --scale smoke|full [--model SUBDIR]
"""

from __future__ import annotations

import argparse
from typing import Any

import scorelib as sl

METRIC = "blimp"


def score(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = sl.find_model(args.workspace, args.model)
    summary = sl.weights_summary(model_dir)
    details: dict[str, Any] = {"model": model_dir.name, "params": summary["params"], "scale": args.scale}
    if args.scale == "full":
        res = sl.lm_eval(model_dir, ["blimp"], details=details)
        value = sl.lm_eval_metric(res, "blimp")
        return sl.result(METRIC, value, {METRIC: value}, details)
    model, tok, seq2seq = sl.load_model(model_dir)
    if seq2seq:
        raise sl.ScoreError("BLiMP scores sentence log-probabilities: submit a causal LM")
    pairs = sl.read_jsonl(sl.data_file("blimp_smoke.jsonl"))
    acc = sl.minimal_pair_accuracy(model, tok, pairs)
    metrics = {METRIC: acc["acc"]}
    metrics.update({f"blimp_{k.removeprefix('acc_')}": v for k, v in acc.items() if k != "acc"})
    details.update(pairs=len(pairs), chance=0.5)
    return sl.result(METRIC, acc["acc"], metrics, details)


if __name__ == "__main__":
    sl.main(METRIC, score)
