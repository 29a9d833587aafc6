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
    return sl.mmlu_result(METRIC, model_dir, args.scale, details, by_subject=True)


if __name__ == "__main__":
    sl.main(METRIC, score)
