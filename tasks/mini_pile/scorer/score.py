"""Protected scorer for mini_pile: SuperGLUE by log-likelihood multiple choice.

Smoke scale: held-out toy-language choice items (scorer/data/superglue_smoke.jsonl), scored
with the same log-likelihood code lm-eval uses. Full scale: lm-eval's
`super-glue-lm-eval-v1` tasks but ReCoRD (scorelib.SUPERGLUE_TASKS).
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
    return sl.superglue_result(METRIC, model_dir, args.scale, details)


if __name__ == "__main__":
    sl.main(METRIC, score)
