"""The llm_merging scaffold: LoRA updates folded exactly as PEFT defines them, methods found as
entry points, the hour enforced by main.py and by the scorer, and the competition's model rules
checked by the scorer against the staged assets."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from tasks.api import SCORELIB, load_task, prepare_workspace
from tests.tasks_harness import score

SPEC = load_task("llm_merging")
STARTER = SPEC.dir / "starter"
COMMIT_BASE = "1" * 40
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def _module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


lora = _module(STARTER / "llm_merging" / "lora.py", "merging_lora")


def test_a_folded_update_is_b_times_a_times_alpha_over_r(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a, b = torch.randn(4, 16), torch.randn(12, 4)
    emb_a, emb_b = torch.randn(4, 30), torch.randn(8, 4)  # PEFT's embedding pair: (r, vocab), (dim, r)
    lora.write_adapter(tmp_path / "ad", {"r": 4, "lora_alpha": 8}, {"model.layers.0.q_proj": (a, b)})
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    assert set(tensors) == {"base_model.model.model.layers.0.q_proj.lora_A.weight",
                            "base_model.model.model.layers.0.q_proj.lora_B.weight"}
    tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = emb_a
    tensors["base_model.model.model.embed_tokens.lora_embedding_B"] = emb_b
    save_file(tensors, str(tmp_path / "ad" / "adapter_model.safetensors"))
    ad = lora.read_adapter(tmp_path / "ad")
    deltas = ad.deltas()
    assert torch.allclose(deltas["model.layers.0.q_proj.weight"], b @ a * 2.0)
    assert torch.allclose(deltas["model.embed_tokens.weight"], (emb_b @ emb_a).T * 2.0)
    state = {"model.layers.0.q_proj.weight": torch.ones(12, 16, dtype=torch.float16),
             "model.embed_tokens.weight": torch.zeros(30, 8)}
    weight = state["model.layers.0.q_proj.weight"]
    assert lora.fold(state, [deltas, deltas], [0.25, 0.5]) == sorted(deltas)
    assert state["model.layers.0.q_proj.weight"] is weight and weight.dtype == torch.float16
    assert torch.allclose(weight.float(), (1 + 0.75 * b @ a * 2.0).half().float())
    rs = lora.Adapter("x", {"r": 4, "lora_alpha": 8, "use_rslora": True, "fan_in_fan_out": True},
                      {"m": (a, b)}, frozenset())
    assert rs.scaling == 8 / math.sqrt(4)
    assert torch.allclose(rs.deltas()["m.weight"], (b @ a).T * 4.0)  # Conv1D layers store W^T


def test_adapters_this_code_cannot_fold_are_refused_by_name(tmp_path: Path) -> None:
    lora.write_adapter(tmp_path / "ad", {"r": 2, "lora_alpha": 2}, {"m": (torch.ones(2, 3), torch.ones(3, 2))})
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    save_file({**tensors, "base_model.model.lm_head.modules_to_save.weight": torch.ones(2)},
              str(tmp_path / "ad" / "adapter_model.safetensors"))
    with pytest.raises(lora.LoraError, match="modules_to_save"):
        lora.read_adapter(tmp_path / "ad")
    (tmp_path / "ia3").mkdir()
    (tmp_path / "ia3" / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(lora.LoraError, match="IA3 adapter"):
        lora.read_adapter(tmp_path / "ia3")
    with pytest.raises(lora.LoraError, match="does not have"):
        lora.fold({"other.weight": torch.zeros(3, 3)}, [{"m.weight": torch.zeros(3, 3)}], [1.0])


@pytest.fixture(scope="module")
def smoke_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke workspace's layout without its pretraining: the starter, a tiny random Llama
    base, two random rank-4 LoRA experts of it, and small validation sets."""
    from tasks import base_models, toy_corpus

    ws = tmp_path_factory.mktemp("merging") / "ws"
    prepare_workspace(load_task("llm_merging", root=_starter_only(tmp_path_factory)), "smoke", ws)
    tok = base_models.tokenizer()
    base = base_models.tiny("llama", tok, seed=0)
    base_models.save(base, tok, ws / "models" / "base")
    modules = [k.removesuffix(".weight") for k in base.state_dict() if k.endswith(("q_proj.weight", "v_proj.weight"))]
    for seed, name in ((1, "expert_a"), (2, "expert_b")):
        g = torch.Generator().manual_seed(seed)
        pairs = {m: (torch.randn(4, 64, generator=g) * 0.1, torch.randn(64, 4, generator=g) * 0.1) for m in modules}
        lora.write_adapter(ws / "models" / name, {"r": 4, "lora_alpha": 8, "base_model_name_or_path": "models/base"}, pairs)
    val = ws / "data" / "validation"
    val.mkdir(parents=True)
    (val / "cosmosqa.jsonl").write_text("".join(json.dumps({"input": r["context"], "answer_choices": r["choices"], "label": r["label"]}) + "\n"
                                                for r in toy_corpus.choice_items(5, 3)))
    (val / "xsum.jsonl").write_text("".join(json.dumps({"input": t, "target": t}) + "\n" for t in toy_corpus.sentences(5, 4)))
    return ws


def _starter_only(factory: pytest.TempPathFactory) -> Path:
    """The llm_merging bundle without its smoke prepare script (the fixture makes the models)."""
    root = factory.mktemp("bundle")
    shutil.copytree(SPEC.dir, root / "llm_merging", ignore=shutil.ignore_patterns("prepare.py", "__pycache__"))
    return root


def _method(ws: Path, name: str, source: str) -> None:
    """Add a merge method the way an agent is told to: a new file, and an entry point."""
    cls = name.title().replace("_", "")
    (ws / "llm_merging" / "merging" / f"{cls}.py").write_text(source.replace("CLASS", cls))
    pyproject = ws / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(
        '[project.entry-points."llm_merging.merging.Merges"]\n',
        f'[project.entry-points."llm_merging.merging.Merges"]\n{name} = "llm_merging.merging.{cls}:{cls}"\n'))


def _main(ws: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "main.py", *args], cwd=ws, capture_output=True, text=True,
                          timeout=900, env={**os.environ, **(env or {})})


TOY = '''from llm_merging.merging.LlamaAvg import LlamaAvg


class CLASS(LlamaAvg):
    def __init__(self, name):
        super().__init__(name)
        self.list_models = [(EXPERTS)]
        self.base_model_name = BASE
        self.base_model_revision_id = REVISION
        self.parameter_lambdas = [0.5, 0.5]
'''


def test_main_finds_methods_in_pyproject_and_names_the_known_ones(smoke_ws: Path) -> None:
    out = _main(smoke_ws, "-m", "no_such_method")
    assert out.returncode == 2
    assert "unknown merge method 'no_such_method'; known: flan_t5_avg, llama_avg" in out.stderr


def test_a_merge_past_the_hour_is_stopped_and_nothing_is_signed(smoke_ws: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(smoke_ws, ws)
    _method(ws, "slow_avg", TOY.replace("(EXPERTS)", '("models/expert_a", None), ("models/expert_b", None)')
            .replace("BASE", '"models/base"').replace("REVISION", "None")
            + "\n    def merge(self):\n        import time\n        self._load_base_model()\n"
              "        time.sleep(3600)  # a merge far slower than its limit\n")
    (ws / "model").mkdir()
    (ws / "model" / "merge_manifest.json").write_text("{}")  # a stale manifest must not survive
    out = _main(ws, "-m", "slow_avg", "--out", "model", "--limit-s", "3")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "stopped: the merge passed 3 s (merging plus evaluation must take under 1 hour)" in out.stdout
    assert not (ws / "model").exists()


def _stage(cache: Path, repo: str, commit: str, src: Path) -> None:
    """A model staged as `mlrb assets fetch` leaves it: the hub cache's layout, at a commit."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(src, folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)


def _score(ws: Path, scale: str, env: dict[str, str]) -> dict[str, Any]:
    from tasks.api import parse_score_output, score_command

    argv = score_command(SPEC, scale, "model", str(ws), str(SPEC.scorer_dir), str(SCORELIB.parent))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, env={**os.environ, **env})
    return parse_score_output(proc.stdout)


def test_the_scorer_allows_only_declared_models_at_their_pinned_commits(smoke_ws: Path, tmp_path: Path) -> None:
    ws, cache = tmp_path / "ws", tmp_path / "hub"
    shutil.copytree(smoke_ws, ws)
    _stage(cache, "org/tiny-base", COMMIT_BASE, smoke_ws / "models" / "base")
    _stage(cache, "org/expert-a", COMMIT_A, smoke_ws / "models" / "expert_a")
    _stage(cache, "org/expert-b", COMMIT_B, smoke_ws / "models" / "expert_b")
    shutil.rmtree(ws / "models")  # at full scale nothing comes from the workspace
    _method(ws, "hub_avg", TOY.replace("(EXPERTS)", f'("org/expert-a", "{COMMIT_A}"), ("org/expert-b", "{COMMIT_B}")')
            .replace("BASE", '"org/tiny-base"').replace("REVISION", f'"{COMMIT_BASE}"'))
    offline = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = _main(ws, "-m", "hub_avg", "--out", "model", "--no-eval", env=offline)
    assert out.returncode == 0, out.stdout + out.stderr
    manifest = json.loads((ws / "model" / "merge_manifest.json").read_text())
    assert manifest["inputs"] == [{"role": "expert", "repo": "org/expert-a", "revision": COMMIT_A},
                                  {"role": "expert", "repo": "org/expert-b", "revision": COMMIT_B},
                                  {"role": "base", "repo": "org/tiny-base", "revision": COMMIT_BASE}]

    def declared(**changes: Any) -> str:
        items = [{"kind": "model", "repo": r, "revision": c, "pinned": True, "for": "agent"}
                 for r, c in (("org/tiny-base", COMMIT_BASE), ("org/expert-a", COMMIT_A), ("org/expert-b", COMMIT_B))]
        return json.dumps([{**i, **changes.get(i["repo"], {})} for i in items if changes.get(i["repo"]) != "drop"])

    undeclared = _score(ws, "full", {**offline, "MLRB_ASSETS": declared(**{"org/expert-b": "drop"})})
    assert undeclared["value"] == 0.0
    assert "org/expert-b is not one of the task's staged models" in undeclared["error"]
    moved = _score(ws, "full", {**offline, "MLRB_ASSETS": declared(**{"org/tiny-base": {"revision": "2" * 40}})})
    assert "is not the declared pinned commit 222222222222 (on the hub before 2024-05-31)" in moved["error"]
    branch = _score(ws, "full", {**offline, "MLRB_ASSETS": declared(**{"org/expert-a": {"pinned": False}})})
    assert "org/expert-a@aaaaaaaaaaaa is not the declared pinned commit" in branch["error"]
    shutil.rmtree(cache / "models--org--expert-a")
    unstaged = _score(ws, "full", {**offline, "MLRB_ASSETS": declared()})
    assert "org/expert-a@aaaaaaaaaaaa is not in the staged hub cache" in unstaged["error"]
    _stage(cache, "org/expert-a", COMMIT_A, smoke_ws / "models" / "expert_a")
    # every rule passes: the scorer's own check, run in this process with the scorer's environment
    sys.path.insert(0, str(SCORELIB.parent))
    scorer = _module(SPEC.scorer_dir / "score.py", "merging_score")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(cache))
        mp.setenv("MLRB_ASSETS", declared())
        checked = scorer.check_inputs(ws, "full", manifest["inputs"])
    assert checked == {"base_params": lora_free_params(smoke_ws / "models" / "base"),
                       "inputs": [f"org/expert-a@{'a' * 12}", f"org/expert-b@{'b' * 12}", f"org/tiny-base@{'1' * 12}"]}


def lora_free_params(folder: Path) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() for f in folder.glob("*.safetensors") for t in load_file(str(f)).values())


def test_local_folders_stand_in_for_the_hub_only_at_smoke_scale(smoke_ws: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(smoke_ws, ws)
    _method(ws, "toy_avg", TOY.replace("(EXPERTS)", '("models/expert_a", None), ("models/expert_b", None)')
            .replace("BASE", '"models/base"').replace("REVISION", "None"))
    out = _main(ws, "-m", "toy_avg", "--out", "model", "--validation", "data/validation", "--eval-limit", "5")
    assert out.returncode == 0, out.stdout + out.stderr
    manifest = json.loads((ws / "model" / "merge_manifest.json").read_text())
    assert set(manifest["validation"]) == {"cosmos_qa", "xsum"}
    assert [i["role"] for i in manifest["inputs"]] == ["expert", "expert", "base"]
    full = _score(ws, "full", {"MLRB_ASSETS": "[]"})
    assert full["value"] == 0.0 and "is a local folder; at full scale every model comes from the staged hub cache" in full["error"]
    smoke = score(SPEC, ws, model="model")
    assert smoke["error"] is None and smoke["details"]["inputs"] == ["models/expert_a", "models/expert_b", "models/base"]
    assert smoke["details"]["base_params"] == smoke["details"]["params"]  # folding adds no parameter
