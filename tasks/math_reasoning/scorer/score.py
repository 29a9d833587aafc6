"""Protected scorer for math_reasoning: generate Lean 3 for held-out statements, then the share
that passes the Lean check, ROUGE-L and BLEU.

The check is named for what it is: `compile_rate` when `lean` (Lean 3 with mathlib) is on the
scorer's PATH and compiles each generation, `syntax_rate` when only the Lean 3 syntax check runs.
The headline `lean_check_rate` is whichever of the two ran; `details.checker` says which.
Held-out rows: the smoke set at smoke scale; at full scale scorer/data/autoformalization_full.jsonl
when a lab installs one, else a fixed twentieth (by name) of the staged autoformalization set.
Usage: python3 score.py --workspace DIR --scale smoke|full [--model SUBDIR]
"""

from __future__ import annotations

import argparse
import hashlib
from typing import Any

import scorelib as sl

METRIC = "lean_check_rate"


def generate(model: Any, tok: Any, seq2seq: bool, text: str, max_new: int = 64) -> str:
    import torch

    prompt = text if seq2seq else f"{text} lean :"
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if seq2seq and tok.eos_token_id is not None:
        ids = torch.cat([ids, torch.tensor([[tok.eos_token_id]])], dim=1)
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(model.device), max_new_tokens=max_new, do_sample=False,
                             num_beams=1, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    gen = out[0] if seq2seq else out[0, ids.shape[1]:]
    return " ".join(tok.decode(gen, skip_special_tokens=True).split())


DATASET = "AlgorithmicResearchGroup/math_reasoning_autoformalization_track"
PORTION = 20  # one row in PORTION, chosen by the hash of its name
MAX_ROWS = 200


def full_rows() -> list[dict[str, str]]:
    """Full scale: upstream's "portion of the data provided", the staged set read with the
    prompt's own load_dataset call; a fixed portion by name, so every run is scored alike."""
    from datasets import load_dataset

    try:
        data = load_dataset(DATASET)["train"]
    except Exception as exc:  # noqa: BLE001 - a missing staged set is the host's, said plainly
        raise sl.ScoreError(f"the autoformalization set {DATASET} does not load: {exc}") from exc
    picked = [r for r in data if int(hashlib.sha256(str(r["name"]).encode()).hexdigest(), 16) % PORTION == 0]
    rows = [{"informal": f"{r['informal_statement']} {r['informal_proof']}".strip(),
             "formal": r["formal_proof"]} for r in picked or list(data)[:1]]
    return rows[:MAX_ROWS]


def score(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = sl.find_model(args.workspace, args.model)
    summary = sl.weights_summary(model_dir)
    if args.scale == "smoke":
        rows = sl.read_jsonl(sl.data_file("autoformalization_smoke.jsonl"))
    elif sl.data_file("autoformalization_full.jsonl").is_file():  # a lab's own held-out set
        rows = sl.read_jsonl(sl.data_file("autoformalization_full.jsonl"))
    else:
        rows = full_rows()
    model, tok, seq2seq = sl.load_model(model_dir)
    hyps = [generate(model, tok, seq2seq, r["informal"]) for r in rows]
    refs = [r["formal"] for r in rows]
    compiled, reasons, checker = 0, [], "lean"
    for h in hyps:
        res = sl.lean_compile(h)
        if res is None:
            checker = "lean3-syntax"
            res = sl.lean3_syntax_ok(h)
        compiled += int(res[0])
        reasons.append(res[1][:80])
    value = compiled / max(1, len(rows))
    named = "compile_rate" if checker == "lean" else "syntax_rate"
    metrics = {METRIC: value, named: value, "rouge_l": sl.rouge_l(hyps, refs), "bleu": sl.bleu(hyps, refs)}
    details = {"model": model_dir.name, "params": summary["params"], "scale": args.scale,
               "items": len(rows), "checker": checker, "seq2seq": seq2seq,
               "examples": [{"reference": r, "generated": h} for r, h in zip(refs[:3], hyps[:3], strict=True)]}
    return sl.result(METRIC, value, metrics, details)


if __name__ == "__main__":
    sl.main(METRIC, score)
