"""Fine-tune a causal LM on instruction data (jsonl: instruction, response) and save it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from mlrb_log import log
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="base_model")
    ap.add_argument("--data", default="data/dolly/train.jsonl")
    ap.add_argument("--out", default="model")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-seconds", type=float, default=150)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base)
    rows = [json.loads(x) for x in Path(args.data).read_text().splitlines() if x.strip()]
    texts = [f"instruction : {r['instruction']} response : {r['response']}" for r in rows]
    seqs = [[tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"], tok.eos_token_id]
            for t in texts]
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id
    batch_all = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    labels_all = batch_all.masked_fill(batch_all == pad, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    start = time.monotonic()
    model.train()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(seqs), (args.batch,))
        x, y = batch_all[idx], labels_all[idx]
        loss = model(input_ids=x, attention_mask=(x != pad).long(), labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == 1:
            log(step=step, loss=loss.item())
        if time.monotonic() - start > args.max_seconds:
            break
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    print(f"saved the fine-tuned model to {args.out}/", flush=True)


if __name__ == "__main__":
    main()
