"""Protected scorer for math_reasoning: generate Lean 3 for held-out statements, then the share
that passes the Lean check, ROUGE-L and BLEU.

The check is named for what it is: `compile_rate` when `lean` (Lean 3 with mathlib) is on the
scorer's PATH and compiles each generation, `syntax_rate` when only the Lean 3 syntax check runs.
The headline `lean_check_rate` is whichever of the two ran; `details.checker` says which.
Usage: python3 score.py --workspace DIR --scale smoke|full [--model SUBDIR]
"""

from __future__ import annotations

import argparse
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


def score(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = sl.find_model(args.workspace, args.model)
    summary = sl.weights_summary(model_dir)
    name = "autoformalization_smoke.jsonl" if args.scale == "smoke" else "autoformalization_full.jsonl"
    if not sl.data_file(name).is_file():
        raise sl.ScoreError(f"the held-out set {name} is not installed in the scorer")
    rows = sl.read_jsonl(sl.data_file(name))
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
               "method": sl.local_method(
                   "greedy generation (64 new tokens), then the Lean check",
                   f"share of the {len(rows)} held-out statements whose generation passes {checker}",
                   metric=named, bleu="corpus BLEU-4, whitespace tokens, add-one smoothing",
                   rouge_l="mean ROUGE-L F1, whitespace tokens"),
               "examples": [{"reference": r, "generated": h} for r, h in zip(refs[:3], hyps[:3], strict=True)]}
    return sl.result(METRIC, value, metrics, details)


if __name__ == "__main__":
    sl.main(METRIC, score)
