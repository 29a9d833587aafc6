"""The LLM-Merging scaffold: merge models by (weighted) parameter averaging.

Examples in the style of the competition's starter kit:
  python merge.py --method llama_average --models models/expert_a models/expert_b --out model
  python merge.py --method flan_t5_average --models t5_a t5_b --weights 0.7 0.3 --out model

Every merge must go through this scaffold: it writes `merge_manifest.json` beside the merged
model, recording the inputs' and the output's weight hashes, signed with the scaffold's own
hash, which the scorer verifies. Edit merge strategies below `MERGES`, not the manifest code.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

SCAFFOLD = "mlrb-llm-merging/1"


def weights_sha256(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def average(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    out = {}
    for k in states[0]:
        if states[0][k].is_floating_point():
            total = torch.zeros_like(states[0][k], dtype=torch.float32)
            for w, s in zip(weights, states, strict=True):
                total += w * s[k].float()
            out[k] = total.to(states[0][k].dtype)
        else:
            out[k] = states[0][k]
    return out


MERGES = {
    "llama_average": (AutoModelForCausalLM, average),  # decoder-only (Llama-style) models
    "flan_t5_average": (AutoModelForSeq2SeqLM, average),  # encoder-decoder (Flan-T5-style)
}


def sign(body: dict) -> str:
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest().encode()
    return hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=sorted(MERGES), default="llama_average")
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--weights", nargs="+", type=float)
    ap.add_argument("--out", default="model")
    args = ap.parse_args()
    start = time.monotonic()
    weights = args.weights or [1 / len(args.models)] * len(args.models)
    if len(weights) != len(args.models):
        raise SystemExit("give one weight per model")
    cls, merge = MERGES[args.method]
    models = [cls.from_pretrained(m) for m in args.models]
    merged = models[0]
    merged.load_state_dict(merge([m.state_dict() for m in models], weights))
    out = Path(args.out)
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(args.models[0]).save_pretrained(out)
    body = {
        "scaffold": SCAFFOLD,
        "scaffold_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "method": args.method, "weights": weights,
        "inputs": [{"path": m, "sha256": weights_sha256(Path(m))} for m in args.models],
        "output_sha256": weights_sha256(out),
        "seconds": round(time.monotonic() - start, 2),
    }
    (out / "merge_manifest.json").write_text(json.dumps({**body, "signature": sign(body)}, indent=1))
    try:
        from mlrb_log import log
    except ImportError:
        log = None
    if log is not None:
        log(step=1, merge_seconds=body["seconds"], models=len(args.models))
    print(f"merged {len(args.models)} models into {out}/ in {body['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
