"""LoRA adapters in PEFT's on-disk format, read and folded into base weights directly.

An adapter folder holds `adapter_config.json` (r, lora_alpha, target_modules, ...) and
`adapter_model.safetensors` (or `adapter_model.bin`) with one `lora_A`/`lora_B` pair per
adapted module. Its weight update is delta = B @ A * scaling, with scaling = lora_alpha / r
(lora_alpha / sqrt(r) with rslora), transposed for fan_in_fan_out layers: exactly what
`peft`'s `merge_and_unload()` adds, computed here without needing peft installed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

PEFT_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                  r"(?:\.default)?(?:\.weight)?$")


class LoraError(ValueError):
    """An adapter that cannot be read or folded into its base."""


@dataclass
class Adapter:
    """One LoRA adapter: its config and, per adapted base module, its (A, B) pair."""

    name: str
    config: dict
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    embedding: frozenset[str]

    @property
    def scaling(self) -> float:
        r = int(self.config.get("r", 8))
        alpha = float(self.config.get("lora_alpha", r))
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def deltas(self) -> dict[str, torch.Tensor]:
        """Base parameter name -> the weight update this adapter adds to it (float32)."""
        out: dict[str, torch.Tensor] = {}
        fan_in_fan_out = bool(self.config.get("fan_in_fan_out"))
        for module, (a, b) in self.pairs.items():
            delta = (b.float() @ a.float()) * self.scaling
            if module in self.embedding or fan_in_fan_out:
                delta = delta.T  # embeddings and Conv1D-style layers store the weight transposed
            out[f"{module}.weight"] = delta
        return out


def is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def read_adapter(folder: Path, name: str | None = None) -> Adapter:
    """The adapter in `folder`; LoraError when it is not a LoRA adapter this code can fold."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise LoraError(f"{folder}: no readable adapter_config.json ({exc})") from exc
    kind = str(config.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise LoraError(f"{folder}: a {kind} adapter; only LoRA adapters can be folded into a base")
    tensors = _read_tensors(folder)
    halves: dict[str, dict[str, torch.Tensor]] = {}
    embedding: set[str] = set()
    other: list[str] = []
    for key, value in tensors.items():
        m = _KEY.match(key.removeprefix(PEFT_PREFIX))
        if m is None:
            other.append(key)
            continue
        part = m.group("part")
        if part.startswith("lora_embedding"):
            embedding.add(m.group("module"))
        halves.setdefault(m.group("module"), {})[part[-1]] = value
    if other:
        raise LoraError(f"{folder}: weights that are not LoRA pairs (e.g. {other[0]}); "
                        "modules_to_save and other full weights are not supported")
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, h in halves.items():
        if set(h) != {"A", "B"}:
            raise LoraError(f"{folder}: {module} has lora_{''.join(h)} without its pair")
        # embedding adapters store A as (r, vocab) and B as (dim, r): B @ A is (dim, vocab)
        pairs[module] = (h["A"], h["B"])
    if not pairs:
        raise LoraError(f"{folder}: the adapter holds no LoRA weights")
    return Adapter(name or folder.name, config, pairs, frozenset(embedding))


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    st = folder / "adapter_model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    binary = folder / "adapter_model.bin"
    if binary.is_file():
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise LoraError(f"{folder}: neither adapter_model.safetensors nor adapter_model.bin")


def fold(state: dict[str, torch.Tensor], deltas: list[dict[str, torch.Tensor]],
         weights: list[float]) -> list[str]:
    """Add the weighted sum of the deltas to the base weights in `state`, in place (a model's
    `state_dict()` shares its parameters, so the model itself changes); the keys changed."""
    if len(deltas) != len(weights):
        raise LoraError(f"{len(deltas)} adapters but {len(weights)} weights")
    keys = sorted({k for d in deltas for k in d})
    for key in keys:
        if key not in state:
            raise LoraError(f"the adapters change {key}, which the base model does not have")
        base = state[key]
        total = base.detach().float().clone()
        for w, d in zip(weights, deltas, strict=True):
            if key in d:
                if d[key].shape != base.shape:
                    raise LoraError(f"{key}: the adapter's update is {tuple(d[key].shape)}, "
                                    f"the base weight {tuple(base.shape)}")
                total += w * d[key].to(total.device)
        with torch.no_grad():
            base.copy_(total.to(base.dtype))
    return keys


def write_adapter(folder: Path, config: dict, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Save an adapter in PEFT's layout (for adapters made here, e.g. extracted by SVD)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (a, b) in pairs.items():
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}, indent=1))


def extract(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], modules: list[str],
            r: int, alpha: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The rank-r LoRA pair per module that best approximates tuned - base (truncated SVD)."""
    scaling = alpha / r
    pairs = {}
    for module in modules:
        diff = (tuned[f"{module}.weight"].float() - base[f"{module}.weight"].float()) / scaling
        u, s, vh = torch.linalg.svd(diff, full_matrices=False)
        root = s[:r].sqrt()
        pairs[module] = (root[:, None] * vh[:r], u[:, :r] * root[None, :])
    return pairs
