"""Train a small T5-style sequence-to-sequence model from natural language to Lean 3
(jsonl: informal, formal) and save it with its tokenizer."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from mlrb_log import log
from transformers import T5Config, T5ForConditionalGeneration
from word_tokenizer import build


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/autoformalization/train.jsonl")
    ap.add_argument("--out", default="model")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-seconds", type=float, default=150)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    rows = [json.loads(x) for x in Path(args.data).read_text().splitlines() if x.strip()]
    tok = build([r["informal"] for r in rows] + [r["formal"] for r in rows])
    pad, eos = tok.pad_token_id, tok.eos_token_id
    src = [tok(r["informal"], add_special_tokens=False)["input_ids"] + [eos] for r in rows]
    tgt = [tok(r["formal"], add_special_tokens=False)["input_ids"] + [eos] for r in rows]
    ws, wt = max(map(len, src)), max(map(len, tgt))
    X = torch.tensor([s + [pad] * (ws - len(s)) for s in src])
    Y = torch.tensor([t + [-100] * (wt - len(t)) for t in tgt])
    config = T5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=2,
                      num_decoder_layers=2, num_heads=4, pad_token_id=pad, eos_token_id=eos,
                      decoder_start_token_id=pad)  # type: ignore[call-arg]
    model = T5ForConditionalGeneration(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    start = time.monotonic()
    model.train()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(rows), (args.batch,))
        x, y = X[idx], Y[idx]
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
    print(f"saved the seq2seq model to {args.out}/", flush=True)


if __name__ == "__main__":
    main()
