"""The validation sets' evaluation main.py runs after a merge: CosmosQA accuracy (the choice
with the highest log-likelihood) and XSum ROUGE-L (greedy summaries), as in upstream's kit.

The sets load with `load_dataset('AlgorithmicResearchGroup/llm_merging', 'cosmosqa')` (and
'xsum') from the staged cache, or from `cosmosqa.jsonl` / `xsum.jsonl` in a folder given with
`--validation` (smoke scale). Rows: cosmosqa {input, answer_choices, label}, xsum {input, target}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

DATASET = "AlgorithmicResearchGroup/llm_merging"


def load_rows(name: str, folder: Path | None, limit: int | None) -> list[dict[str, Any]]:
    if folder is not None:
        lines = (folder / f"{name}.jsonl").read_text().splitlines()
        rows = [json.loads(x) for x in lines if x.strip()]
    else:
        from datasets import load_dataset

        rows = list(load_dataset(DATASET, name, split="train"))
    return rows[:limit] if limit else rows


def _loglik(model: Any, tok: Any, encoder_decoder: bool, context: str, choice: str) -> float:
    if encoder_decoder:
        enc = tok(context, return_tensors="pt").to(model.device)
        labels = tok(choice, return_tensors="pt")["input_ids"].to(model.device)
        out = model(**enc, labels=labels)
        return -float(out.loss) * labels.shape[1]
    ctx = tok(context, return_tensors="pt")["input_ids"]
    full = tok(f"{context} {choice}", return_tensors="pt")["input_ids"]
    n = full.shape[1] - ctx.shape[1]
    if n <= 0:
        return float("-inf")
    ids = full.to(model.device)
    logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    picked = logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]]
    return float(picked[-n:].sum())


def _generate(model: Any, tok: Any, encoder_decoder: bool, text: str, max_new: int) -> str:
    enc = tok(text, return_tensors="pt").to(model.device)
    out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, num_beams=1,
                         pad_token_id=tok.pad_token_id)
    gen = out[0] if encoder_decoder else out[0, enc["input_ids"].shape[1]:]
    return tok.decode(gen, skip_special_tokens=True)


def rouge_l(hyp: str, ref: str) -> float:
    """ROUGE-L F1 on lowercased whitespace tokens."""
    a, b = hyp.lower().split(), ref.lower().split()
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def evaluate(model: Any, tok: Any, architecture: str, folder: Path | None = None,
             limit: int | None = None, max_gen_len: int = 64) -> dict[str, dict[str, float]]:
    encoder_decoder = architecture == "encoder_decoder"
    model.eval()
    with torch.no_grad():
        cosmos = load_rows("cosmosqa", folder, limit)
        right = 0
        for row in cosmos:
            scores = [_loglik(model, tok, encoder_decoder, row["input"], c) for c in row["answer_choices"]]
            right += int(max(range(len(scores)), key=scores.__getitem__) == int(row["label"]))
        xsum = load_rows("xsum", folder, limit)
        rouge = [rouge_l(_generate(model, tok, encoder_decoder, r["input"], max_gen_len), r["target"])
                 for r in xsum]
    return {"cosmos_qa": {"accuracy": right / max(1, len(cosmos))},
            "xsum": {"rougeL": sum(rouge) / max(1, len(rouge))}}
