"""Protected scorer for llm_merging: verify the merge went through the provided scaffold and
followed the competition's rules, then MMLU by log-likelihood, all within the hour.

- The manifest must be signed with the pristine scaffold's hash (scorer/data/scaffold.sha256),
  its output hash must match the submitted weights.
- Its inputs (a base and at least two experts) must be what the rules allow: at full scale
  each is a model of the task's staged assets (MLRB_ASSETS, from task.toml) at its declared
  pinned commit, the commits that were on the hub before 2024-05-31, found in the staged cache
  (HF_HUB_CACHE); at smoke scale, workspace folders unchanged since the merge. The base and the
  merged model have at most 8B parameters.
- Merging plus evaluation must take under an hour: the manifest's signed merge time plus this
  scorer's evaluation time. The evaluation is stopped when the hour is up; over it, the score
  is 0 with an error saying so.
Otherwise too the score is 0 with an error.
Usage: python3 score.py --workspace DIR --scale smoke|full [--model SUBDIR]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import scorelib as sl

METRIC = "mmlu"
MAX_PARAMS = 8_000_000_000
LIMIT_S = 3600.0  # merge plus evaluation
CUTOFF = "2024-05-31"


class OverTheHour(Exception):
    pass


def weights_sha256(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def verify_manifest(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "merge_manifest.json"
    if not path.is_file():
        raise sl.ScoreError("no merge_manifest.json: the merge did not go through the scaffold "
                            "(python main.py -m NAME)")
    try:
        manifest = json.loads(path.read_text())
        signature = manifest.pop("signature")
    except (ValueError, KeyError, AttributeError) as exc:
        raise sl.ScoreError("merge_manifest.json is malformed") from exc
    pristine = sl.data_file("scaffold.sha256").read_text().strip()
    if manifest.get("scaffold_sha256") != pristine:
        raise sl.ScoreError("the merge ran through a modified scaffold")
    expected = hmac.new(pristine.encode(), json.dumps(manifest, sort_keys=True).encode(),
                        hashlib.sha256).hexdigest()
    if not isinstance(signature, str) or not hmac.compare_digest(signature, expected):
        raise sl.ScoreError("merge_manifest.json's signature is invalid")
    if manifest.get("output_sha256") != weights_sha256(model_dir):
        raise sl.ScoreError("the submitted weights are not the ones the scaffold wrote")
    return manifest


def declared_assets() -> dict[str, dict[str, Any]]:
    """The task's declared model assets by repository id, as the runner hands them over."""
    try:
        items = json.loads(os.environ.get("MLRB_ASSETS", "[]"))
    except ValueError as exc:
        raise sl.ScoreError("MLRB_ASSETS is not JSON: the runner's asset metadata is broken") from exc
    return {a["repo"]: a for a in items if isinstance(a, dict) and a.get("kind") == "model"}


def staged_snapshot(repo: str, commit: str) -> Path | None:
    cache = os.environ.get("HF_HUB_CACHE")
    if not cache:
        return None
    snap = Path(cache) / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    return snap if snap.is_dir() else None


def check_inputs(workspace: Path, scale: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each input allowed by the rules; returns the base's parameter count and the inputs' names."""
    bases = [i for i in inputs if i.get("role") == "base"]
    experts = [i for i in inputs if i.get("role") == "expert"]
    if len(bases) != 1 or len(experts) < 2:
        raise sl.ScoreError(f"a merge needs one base and at least two experts; the manifest has "
                            f"{len(bases)} base and {len(experts)} experts")
    declared = declared_assets()
    base_params = 0
    names = []
    for inp in inputs:
        if "repo" in inp:
            repo, commit = str(inp["repo"]), str(inp.get("revision", ""))
            asset = declared.get(repo)
            if asset is None:
                raise sl.ScoreError(f"{repo} is not one of the task's staged models; models must be "
                                    f"declared assets, pinned to a commit from before {CUTOFF}")
            if not asset.get("pinned") or asset.get("revision") != commit:
                raise sl.ScoreError(f"{repo}@{commit[:12]} is not the declared pinned commit "
                                    f"{str(asset.get('revision'))[:12]} (on the hub before {CUTOFF})")
            folder = staged_snapshot(repo, commit)
            if folder is None:
                raise sl.ScoreError(f"{repo}@{commit[:12]} is not in the staged hub cache")
            names.append(f"{repo}@{commit[:12]}")
        elif scale == "full":
            raise sl.ScoreError(f"input {inp.get('path')!r} is a local folder; at full scale every "
                                "model comes from the staged hub cache")
        else:
            folder = workspace / str(inp.get("path", "")).removeprefix("/workspace/")
            if not folder.is_dir() or weights_sha256(folder) != inp.get("sha256"):
                raise sl.ScoreError(f"input model {inp.get('path')!r} is missing or changed since the merge")
            names.append(str(inp.get("path")))
        if inp.get("role") == "base":
            base_params = sl.weights_summary(folder)["params"]
            if base_params > MAX_PARAMS:
                raise sl.ScoreError(f"the base {names[-1]} has {base_params} parameters: the limit is 8B")
    return {"base_params": base_params, "inputs": names}


def _over(_sig: int, _frame: Any) -> None:
    raise OverTheHour


def score(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = sl.find_model(args.workspace, args.model)
    summary = sl.weights_summary(model_dir)
    if summary["params"] > MAX_PARAMS:
        raise sl.ScoreError(f"{summary['params']} parameters: the limit is 8B")
    manifest = verify_manifest(model_dir)
    checked = check_inputs(args.workspace, args.scale, list(manifest.get("inputs") or []))
    details: dict[str, Any] = {"model": model_dir.name, "params": summary["params"], "scale": args.scale,
                               "method": manifest.get("method"), **checked,
                               "validation": manifest.get("validation")}
    merge_s = float(manifest.get("seconds", 0) or 0)
    if merge_s >= LIMIT_S:
        return sl.result(METRIC, 0.0, {METRIC: 0.0, "merge_seconds": merge_s}, details,
                         error=f"the merge took {merge_s:.0f} s; merging plus evaluation must take under 1 hour")
    start = time.monotonic()
    signal.signal(signal.SIGALRM, _over)
    signal.setitimer(signal.ITIMER_REAL, LIMIT_S - merge_s)  # the evaluation stops at the hour
    try:
        out = sl.mmlu_result(METRIC, model_dir, args.scale, details, {"merge_seconds": merge_s})
    except OverTheHour:
        total = merge_s + time.monotonic() - start
        return sl.result(METRIC, 0.0, {METRIC: 0.0, "merge_seconds": merge_s,
                                       "merge_eval_seconds": round(total, 2)}, details,
                         error=f"merging ({merge_s:.0f} s) plus evaluation reached {total:.0f} s and the "
                               "evaluation was stopped; it must take under 1 hour")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    total = merge_s + time.monotonic() - start
    out["metrics"]["merge_eval_seconds"] = round(total, 2)
    if total >= LIMIT_S:
        return sl.result(METRIC, 0.0, {**out["metrics"], METRIC: 0.0}, details,
                         error=f"merging ({merge_s:.0f} s) plus evaluation took {total:.0f} s; "
                               "it must take under 1 hour")
    return out


if __name__ == "__main__":
    sl.main(METRIC, score)
