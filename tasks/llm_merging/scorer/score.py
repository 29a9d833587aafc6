"""Protected scorer for llm_merging: verify the merge went through the provided scaffold,
then MMLU by log-likelihood.

The manifest must be signed with the pristine scaffold's hash (scorer/data/scaffold.sha256),
its output hash must match the submitted weights, and its inputs must exist in the workspace
with matching hashes. Merging plus evaluation must take under an hour (the competition's
rule): the manifest's signed merge time plus this scorer's evaluation time; over it, the score
is 0 with an error. Otherwise too the score is 0 with an error.
Usage: python3 score.py --workspace DIR --scale smoke|full [--model SUBDIR]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import scorelib as sl

METRIC = "mmlu"
MAX_PARAMS = 8_000_000_000
LIMIT_S = 3600.0  # merge plus evaluation


def weights_sha256(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def verify_manifest(workspace: Path, model_dir: Path) -> dict[str, Any]:
    path = model_dir / "merge_manifest.json"
    if not path.is_file():
        raise sl.ScoreError("no merge_manifest.json: the merge did not go through the scaffold (merge.py)")
    try:
        manifest = json.loads(path.read_text())
        signature = manifest.pop("signature")
    except (ValueError, KeyError, AttributeError) as exc:
        raise sl.ScoreError("merge_manifest.json is malformed") from exc
    pristine = sl.data_file("scaffold.sha256").read_text().strip()
    if manifest.get("scaffold_sha256") != pristine:
        raise sl.ScoreError("the merge ran through a modified scaffold")
    key = pristine.encode()
    expected = hmac.new(key, json.dumps(manifest, sort_keys=True).encode(), hashlib.sha256).hexdigest()
    if not isinstance(signature, str) or not hmac.compare_digest(signature, expected):
        raise sl.ScoreError("merge_manifest.json's signature is invalid")
    if manifest.get("output_sha256") != weights_sha256(model_dir):
        raise sl.ScoreError("the submitted weights are not the ones the scaffold wrote")
    inputs = manifest.get("inputs") or []
    if len(inputs) < 2:
        raise sl.ScoreError("a merge needs at least two input models")
    for inp in inputs:
        folder = workspace / str(inp.get("path", "")).removeprefix("/workspace/")
        if not folder.is_dir() or weights_sha256(folder) != inp.get("sha256"):
            raise sl.ScoreError(f"input model {inp.get('path')!r} is missing or changed since the merge")
    return manifest


def score(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = sl.find_model(args.workspace, args.model)
    summary = sl.weights_summary(model_dir)
    if summary["params"] > MAX_PARAMS:
        raise sl.ScoreError(f"{summary['params']} parameters: the limit is 8B")
    manifest = verify_manifest(args.workspace, model_dir)
    details: dict[str, Any] = {"model": model_dir.name, "params": summary["params"], "scale": args.scale,
                               "method": manifest.get("method"), "weights": manifest.get("weights"),
                               "inputs": [i.get("path") for i in manifest.get("inputs", [])]}
    merge_s = float(manifest.get("seconds", 0) or 0)
    if merge_s >= LIMIT_S:
        return sl.result(METRIC, 0.0, {METRIC: 0.0, "merge_seconds": merge_s}, details,
                         error=f"the merge took {merge_s:.0f} s; merging plus evaluation must take under 1 hour")
    start = time.monotonic()
    out = sl.mmlu_result(METRIC, model_dir, args.scale, details, {"merge_seconds": merge_s})
    total = merge_s + time.monotonic() - start
    out["metrics"]["merge_eval_seconds"] = round(total, 2)
    if total >= LIMIT_S:
        return sl.result(METRIC, 0.0, {**out["metrics"], METRIC: 0.0}, details,
                         error=f"merging ({merge_s:.0f} s) plus evaluation took {total:.0f} s; "
                               "it must take under 1 hour")
    return out


if __name__ == "__main__":
    sl.main(METRIC, score)
