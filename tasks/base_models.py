"""Tiny base models for smoke-scale prepare scripts, built from configs (never downloaded).

Where a competition starts from a shipped model (an approved base LLM, experts to merge,
phi-2 to compress), smoke scale ships a tiny model of the same family instead: random init
with a fixed seed, then a few seconds of pretraining on the toy language so that it knows
something a fine-tune, a merge or a pruning can keep or lose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks import toy_corpus as toy


def vocabulary_texts() -> list[str]:
    """Every text of the toy world, so the shipped tokenizer covers all of it."""
    texts = toy.sentences(4000, 1)
    for p in toy.instruction_pairs():
        texts.append(f"instruction : {p['instruction']} response : {p['response']}")
    for c, attrs in toy.facts().items():
        for a in attrs:
            texts.append(toy.fact_question(c, a)[0])
    for it in toy.knowledge_items():
        texts.extend(it["choices"])
    for attr, values in toy.ATTRIBUTES.items():
        texts.append(" ".join(values) + f" {attr}")
    texts.append("summary : document : [UNK]")
    return texts


def tokenizer() -> Any:
    from tasks.baseline_scripts.word_tokenizer import build

    return build(vocabulary_texts())


def tiny(family: str, tok: Any, seed: int = 0) -> Any:
    """A randomly initialised tiny causal LM of the given family ("llama" or "phi")."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PhiConfig, PhiForCausalLM

    torch.manual_seed(seed)
    common = {"vocab_size": len(tok), "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "max_position_embeddings": 128,
              "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
              "pad_token_id": tok.pad_token_id}
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(intermediate_size=128, num_key_value_heads=4, **common))
    if family == "phi":
        return PhiForCausalLM(PhiConfig(intermediate_size=256, **common))
    raise ValueError(f"unknown family {family!r}")


def pretrain(model: Any, tok: Any, texts: list[str], steps: int, seed: int = 0,
             lr: float = 3e-3) -> float:
    """A few optimiser steps of next-token training; returns the last loss."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    stream: list[int] = []
    for t in texts:
        stream += [tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    data = torch.tensor(stream)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        idx = torch.randint(0, len(data) - 33, (32,))
        x = torch.stack([data[i:i + 32] for i in idx])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def save(model: Any, tok: Any, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
