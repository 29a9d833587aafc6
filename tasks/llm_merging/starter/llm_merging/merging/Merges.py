"""The base class of every merge method, with upstream's interface (LLM-Merging's `Merges`).

A method subclasses `Merges`, sets the models to merge in `__init__` and implements `merge()`,
which leaves the merged model in `self.base_model`; `main.py` saves it with `save_model`.
Models are named as on the hub, each with a pinned revision, and load from the staged cache
with the hub offline; a workspace folder may stand in for a hub id (smoke scale). Do not edit
this file: add your method in a new file beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llm_merging import lora
from llm_merging.manifest import weights_sha256


class MergeError(RuntimeError):
    """A merge that cannot go on; the message says why."""


class Merges:
    def __init__(self, name: str) -> None:
        self.name = name
        # (hub id or workspace folder, revision): the experts, LoRA adapters of the base model
        self.list_models: list[tuple[str, str | None]] = []
        self.base_model_name: str | None = None
        self.base_model_revision_id: str | None = None
        self.architecture: str | None = None  # "decoder" or "encoder_decoder"
        self.max_seq_len: int | None = None
        self.max_gen_len: int = 64
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.torch_dtype: Any = "auto"  # the base's stored dtype: a 7B model stays 14 GB in fp16

        self.loaded_models: dict[str, lora.Adapter] = {}
        self.loaded_configs: dict[str, dict[str, Any]] = {}
        self.base_model: Any = None
        self.tokenizer: Any = None
        self.merged_model: dict[str, torch.Tensor] = {}
        self._inputs: list[dict[str, Any]] = []

    def get_name(self) -> str:
        return self.name

    def merge(self) -> Any:
        raise NotImplementedError

    # ----- loading

    def resolve(self, name: str, revision: str | None, role: str | None = "expert") -> Path:
        """The local folder of a model: a workspace folder as it is, a hub id from the staged
        cache at its revision. Each one resolved is recorded for the manifest under its `role`
        ("base" or "expert"; None records nothing)."""
        folder = Path(name)
        if folder.is_dir():
            if role:
                self._inputs.append({"role": role, "path": name, "sha256": weights_sha256(folder)})
            return folder
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import IncompleteSnapshotError

        try:
            snap = Path(snapshot_download(name, revision=revision, local_files_only=True))
        except IncompleteSnapshotError as exc:
            # staged with only the files the task declares (weights, configs, tokenizer): the rest
            # of the repository (cards, licences) is listed by the hub but never fetched
            snap = Path(exc.snapshot_path)
        except Exception as exc:  # noqa: BLE001 - the client's offline misses have no common base
            raise MergeError(f"{name}@{revision or 'main'} is neither a folder here nor staged in the "
                             f"hub cache ({type(exc).__name__}); only staged models can be merged") from exc
        if role:
            self._inputs.append({"role": role, "repo": name, "revision": snap.name})
        return snap

    def _load_base_model(self) -> None:
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        if self.architecture not in ("decoder", "encoder_decoder"):
            raise MergeError(f"architecture {self.architecture!r}: use 'decoder' or 'encoder_decoder'")
        if self.base_model_name is None:
            raise MergeError("set base_model_name (and base_model_revision_id) in __init__")
        folder = self.resolve(self.base_model_name, self.base_model_revision_id, role="base")
        cls = AutoModelForSeq2SeqLM if self.architecture == "encoder_decoder" else AutoModelForCausalLM
        self.base_model = cls.from_pretrained(folder, torch_dtype=self.torch_dtype)
        self.base_model.to(self.device)  # type: ignore[arg-type]

    def _load_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        if self.tokenizer is None:
            folder = self.resolve(self.base_model_name or "", self.base_model_revision_id, role=None)
            kwargs = {"model_max_length": self.max_seq_len} if self.max_seq_len else {}
            self.tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
            if self.tokenizer.pad_token_id is None:
                self.tokenizer.pad_token_id = self.tokenizer.eos_token_id

    def _load_huggingface_models_and_configs(self) -> None:
        """Read each expert adapter in `list_models` into `loaded_models` / `loaded_configs`."""
        if not self.list_models:
            raise MergeError("list_models is empty: name the adapters to merge in __init__")
        for name, revision in self.list_models:
            folder = self.resolve(name, revision)
            if not lora.is_adapter(folder):
                raise MergeError(f"{name}: not a LoRA adapter (no adapter_config.json)")
            adapter = lora.read_adapter(folder, name)
            self.loaded_models[name] = adapter
            self.loaded_configs[name] = adapter.config

    def fold_into_base(self, lambdas: list[float]) -> None:
        """Add the experts' weighted updates (lambda_i * B_i A_i * scaling_i) to the base."""
        state = self.base_model.state_dict()
        deltas = [a.deltas() for a in self.loaded_models.values()]
        for key in lora.fold(state, deltas, lambdas):
            self.merged_model[key] = state[key]

    # ----- the result

    def inputs(self) -> list[dict[str, Any]]:
        """Every model the merge read, with its role: {"repo", "revision"} from the staged hub
        cache, {"path", "sha256"} from a workspace folder."""
        return list(self._inputs)

    def save_model(self, output_dir: str | Path) -> None:
        if self.base_model is None or not self.merged_model:
            raise MergeError("merge() left no merged model")
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.base_model.save_pretrained(out, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out)
