"""Structured magnitude pruning of a causal LM's MLP: keep the intermediate neurons whose
weights have the largest norm, shrink the layers, and save a smaller FP32/FP16 model.
No training, no quantisation, no distillation."""

from __future__ import annotations

import argparse

import torch
from mlrb_log import log
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="base_model")
    ap.add_argument("--out", default="model")
    ap.add_argument("--keep", type=float, default=0.5, help="share of MLP neurons kept")
    ap.add_argument("--fp16", action="store_true")
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base)
    before = sum(p.numel() for p in model.parameters())
    keep_n = 0
    for i, layer in enumerate(model.model.layers):
        fc1, fc2 = layer.mlp.fc1, layer.mlp.fc2
        importance = fc1.weight.norm(dim=1) * fc2.weight.norm(dim=0)
        keep_n = max(1, int(len(importance) * args.keep))
        keep = importance.topk(keep_n).indices.sort().values
        new1 = torch.nn.Linear(fc1.in_features, keep_n, bias=fc1.bias is not None)
        new2 = torch.nn.Linear(keep_n, fc2.out_features, bias=fc2.bias is not None)
        with torch.no_grad():
            new1.weight.copy_(fc1.weight[keep])
            if fc1.bias is not None:
                new1.bias.copy_(fc1.bias[keep])
            new2.weight.copy_(fc2.weight[:, keep])
            if fc2.bias is not None:
                new2.bias.copy_(fc2.bias)
        layer.mlp.fc1, layer.mlp.fc2 = new1, new2
        log(step=i + 1, kept_neurons=keep_n, pruned_importance=float(importance.sum() - importance[keep].sum()))
    model.config.intermediate_size = keep_n
    after = sum(p.numel() for p in model.parameters())
    if args.fp16:
        model = model.half()
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    print(f"pruned {before} -> {after} parameters; saved to {args.out}/", flush=True)


if __name__ == "__main__":
    main()
