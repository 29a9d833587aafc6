"""Train a small GPT-2-style language model from scratch on plain text (one document per
line) and save it with its tokenizer as a Hugging Face model folder."""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from mlrb_log import log
from transformers import GPT2Config, GPT2LMHeadModel
from word_tokenizer import build


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--out", default="model")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-seconds", type=float, default=150)
    ap.add_argument("--fp16", action="store_true", help="save the weights in FP16")
    args = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(2)

    lines = [ln.strip() for p in args.data for ln in Path(p).read_text().splitlines() if ln.strip()]
    tok = build(lines)
    stream: list[int] = []
    for ln in lines:
        stream += [tok.bos_token_id, *tok(ln, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    data = torch.tensor(stream)
    print(f"{len(lines)} documents, {len(data)} tokens, vocabulary {len(tok)}", flush=True)

    config = GPT2Config(vocab_size=len(tok), n_positions=max(64, args.seq_len), n_embd=args.d_model,
                        n_layer=args.layers, n_head=args.heads, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps,
                                                pct_start=0.1)
    start = time.monotonic()
    model.train()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(data) - args.seq_len - 1, (args.batch,))
        x = torch.stack([data[i:i + args.seq_len] for i in idx])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0 or step == 1:
            log(step=step, loss=loss.item(), lr=sched.get_last_lr()[0])
        if time.monotonic() - start > args.max_seconds:
            print(f"time budget reached at step {step}", flush=True)
            break
    if args.fp16:
        model = model.half()
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    print(f"saved {sum(p.numel() for p in model.parameters())} parameters to {args.out}/", flush=True)


if __name__ == "__main__":
    main()
