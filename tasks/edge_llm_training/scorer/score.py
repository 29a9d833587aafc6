"""Protected scorer for edge_llm_training: DRAM budget and dtype checks, then SuperGLUE.

DRAM is the parameter bytes at the stored dtype; the budget is 1 GB at full scale and
scorer/data/budget.json's smoke budget at smoke scale. Over budget, or stored in anything
but FP16/FP32, scores 0 with an error. Smoke SuperGLUE: held-out toy-language choice items.
Usage: python3 score.py --workspace DIR --scale smoke|full [--model SUBDIR]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import scorelib as sl

METRIC = "superglue"


def score(args: argparse.Namespace) -> dict[str, Any]:
    budget = json.loads(sl.data_file("budget.json").read_text())[args.scale]
    model_dir = sl.find_model(args.workspace, args.model)
    summary = sl.weights_summary(model_dir)
    sl.check_float_only(model_dir, summary)
    details: dict[str, Any] = {"model": model_dir.name, "params": summary["params"],
                               "dtypes": summary["dtypes"], "scale": args.scale}
    dram = {"dram_bytes": summary["bytes"], "dram_budget_bytes": budget}
    if summary["bytes"] > budget:
        return sl.result(METRIC, 0.0, {METRIC: 0.0, **dram}, details,
                         error=f"model needs {summary['bytes']} bytes of DRAM; the budget is {budget}")
    return sl.superglue_result(METRIC, model_dir, args.scale, details, dram)


if __name__ == "__main__":
    sl.main(METRIC, score)
