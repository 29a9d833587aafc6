"""Protected scorer for edge_llm_compression: phi family, DRAM budget and dtype checks,
then MMLU by log-likelihood.

DRAM is the parameter bytes at the stored dtype, against 12 GB at full scale and
scorer/data/budget.json's smoke budget. A quantised, over-budget or non-phi model scores 0
with an error. Usage: python3 score.py --workspace DIR --scale smoke|full [--model SUBDIR]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import scorelib as sl

METRIC = "mmlu"


def score(args: argparse.Namespace) -> dict[str, Any]:
    budget = json.loads(sl.data_file("budget.json").read_text())[args.scale]
    model_dir = sl.find_model(args.workspace, args.model)
    summary = sl.weights_summary(model_dir)
    sl.check_float_only(model_dir, summary)
    cfg = sl.read_config(model_dir)
    if cfg.get("model_type") != "phi":
        raise sl.ScoreError(f"the submission must be a compressed phi-2 (model_type is {cfg.get('model_type')!r})")
    details: dict[str, Any] = {"model": model_dir.name, "params": summary["params"],
                               "dtypes": summary["dtypes"], "scale": args.scale}
    dram = {"dram_bytes": summary["bytes"], "dram_budget_bytes": budget}
    if summary["bytes"] > budget:
        return sl.result(METRIC, 0.0, {METRIC: 0.0, **dram}, details,
                         error=f"model needs {summary['bytes']} bytes of DRAM; the budget is {budget}")
    return sl.mmlu_result(METRIC, model_dir, args.scale, details, dram)


if __name__ == "__main__":
    sl.main(METRIC, score)
