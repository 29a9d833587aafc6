"""Protected scorer for math_reasoning: generate Lean 3 for held-out statements, then the share
that passes the Lean check, ROUGE-L and BLEU.

Held-out sets: at smoke scale scorer/data/autoformalization_smoke.jsonl (informal, formal); at
full scale ProofNet's test split (`hoskinson-center/proofnet`, test.jsonl: nl_statement,
nl_proof, formal_statement, src_header), a scorer-only asset read from the staged hub cache
and never mounted for the agent.

The check is named for what it is: `compile_rate` when the scorer has a Lean 3 toolchain with
mathlib (scorelib.lean3_toolchain) and compiles each generation under its row's imports,
`syntax_rate` when only the Lean 3 syntax check runs (details.checker_note says why). The
headline `lean_check_rate` is whichever of the two ran; `details.checker` says which.
BLEU is sacrebleu's corpus BLEU (0..100), ROUGE-L rouge-score's rougeL F1 (0..1).
Usage: python3 score.py --workspace DIR --scale smoke|full [--model SUBDIR]
"""

from __future__ import annotations

import argparse
from typing import Any

import scorelib as sl

METRIC = "lean_check_rate"
HELDOUT_REPO = "hoskinson-center/proofnet"
HELDOUT_FILE = "test.jsonl"


def heldout(scale: str) -> list[dict[str, str]]:
    """Rows of {informal, formal, header}: the model reads `informal`, `formal` is the reference."""
    if scale == "smoke":
        rows = sl.read_jsonl(sl.data_file("autoformalization_smoke.jsonl"))
        return [{"informal": r["informal"], "formal": r["formal"], "header": ""} for r in rows]
    rows = sl.read_jsonl(sl.staged_file(HELDOUT_REPO, HELDOUT_FILE))
    return [{"informal": f"theorem {r['id']} : {r['nl_statement']} proof : {r['nl_proof']}",
             "formal": r["formal_statement"], "header": r.get("src_header", "")} for r in rows]


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
    rows = heldout(args.scale)
    model, tok, seq2seq = sl.load_model(model_dir)
    max_new = 64 if args.scale == "smoke" else 256
    hyps = [generate(model, tok, seq2seq, r["informal"], max_new) for r in rows]
    refs = [r["formal"] for r in rows]
    lean, why = sl.lean3_toolchain()
    passed = 0
    for h, r in zip(hyps, rows, strict=True):
        ok, _reason = lean.compile(h, r["header"]) if lean is not None else sl.lean3_syntax_ok(h)
        passed += int(ok)
    value = passed / max(1, len(rows))
    checker = "lean" if lean is not None else "lean3-syntax"
    named = "compile_rate" if lean is not None else "syntax_rate"
    bleu, bleu_impl = sl.bleu(hyps, refs)
    rouge, rouge_impl = sl.rouge_l(hyps, refs)
    metrics = {METRIC: value, named: value, "rouge_l": rouge, "bleu": bleu}
    details = {"model": model_dir.name, "params": summary["params"], "scale": args.scale,
               "items": len(rows), "checker": checker, "seq2seq": seq2seq,
               "method": sl.local_method(
                   f"greedy generation ({max_new} new tokens), then the Lean check",
                   f"share of the {len(rows)} held-out statements whose generation passes {checker}",
                   metric=named, bleu=f"corpus BLEU 0..100, {bleu_impl}",
                   rouge_l=f"mean ROUGE-L F1 0..1, {rouge_impl}"),
               "checker_note": (f"Lean {lean.version} with mathlib at {lean.project}" if lean is not None
                                else f"a Lean 3 syntax check, not a compile: {why}"),
               "heldout": "autoformalization_smoke.jsonl" if args.scale == "smoke"
               else f"{HELDOUT_REPO} {HELDOUT_FILE}",
               "bleu": f"corpus BLEU 0..100, {bleu_impl}", "rouge_l": f"rougeL F1 0..1, {rouge_impl}",
               "examples": [{"reference": r, "generated": h} for r, h in zip(refs[:3], hyps[:3], strict=True)]}
    return sl.result(METRIC, value, metrics, details)


if __name__ == "__main__":
    sl.main(METRIC, score)
