"""Full scale, proven on CPU: each task's full-scale scorer on a tiny model, with tiny copies of
the benchmark's datasets staged under their real hub ids, so lm-eval's own task definitions
(mmlu, blimp, super-glue-lm-eval-v1) load them offline through the same code as on a GPU host;
one score checked by hand; and one task run end to end at full scale by a scripted agent."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from runner.assets import AssetStore, task_assets
from runner.budget import RunClock
from runner.sandbox import Sandbox, SandboxSpec
from runner.sandbox_factory import create_sandbox, docker_available
from runner.scoring import Scorer
from tasks.api import TaskSpec, list_tasks, load_task
from tests import tiny_hub
from tests.conftest import require
from tests.hub_server import StandInHub

AUTOFORMALIZATION = "AlgorithmicResearchGroup/math_reasoning_autoformalization_track"
PROOFNET = "hoskinson-center/proofnet"  # math_reasoning's scorer-only held-out set
STARTER_LORA = Path(__file__).parents[1] / "tasks" / "llm_merging" / "starter" / "llm_merging" / "lora.py"
# lm-eval's super-glue-lm-eval-v1 tasks that have an accuracy (all but ReCoRD)
SUPERGLUE = ["boolq", "cb", "copa", "multirc", "sglue_rte", "wic", "wsc"]
SUBMISSION_TYPE = {"edge_llm_compression": "phi", "llm_merging": "llama"}  # what each scorer accepts


@dataclass
class Staged:
    home: Path
    hub: StandInHub
    tasks: dict[str, TaskSpec]


def staged_files(spec: TaskSpec, asset: Any, scratch: Path) -> dict[str, bytes]:
    """A tiny copy of one declared asset, as its hub repository would hold it."""
    if asset.repo == tiny_hub.MMLU_REPO:
        return tiny_hub.mmlu()
    if asset.repo == tiny_hub.BLIMP_REPO:
        return tiny_hub.blimp()
    if asset.repo == tiny_hub.SUPERGLUE_REPO:
        return tiny_hub.super_glue()
    if asset.repo == AUTOFORMALIZATION:
        return tiny_hub.dataset_repo({"default": {"train": autoformalization_rows()}})
    if asset.repo == PROOFNET:
        return {"test.jsonl": "".join(json.dumps(r) + "\n" for r in proofnet_rows()).encode(),
                "README.md": b"A tiny copy of ProofNet's test split for tests.\n"}
    if asset.kind == "model" and "lora" in asset.repo:
        return lora_adapter(scratch / asset.name, seed=len(asset.repo))
    if asset.kind == "model":
        folder = tiny_hub.causal_lm(scratch / asset.name, "phi" if "phi" in asset.repo else "llama")
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    splits = asset.splits or ("train",)
    texts = {s: [f"{s} document {i}: the quick brown fox jumps over the lazy dog." for i in range(8)]
             for s in splits}
    if not asset.configs:
        return tiny_hub.text_dataset(texts)
    return tiny_hub.dataset_repo({c: {s: [{"text": t} for t in ts] for s, ts in texts.items()}
                                  for c in asset.configs})


def autoformalization_rows() -> list[dict[str, str]]:
    return [{"name": f"thm_{i}", "informal_statement": f"Show that {i} + 0 = {i}.",
             "informal_proof": "Adding zero changes nothing.",
             "formal_proof": f"theorem thm_{i} : {i} + 0 = {i} := by simp"} for i in range(40)]


def proofnet_rows() -> list[dict[str, str]]:
    return [{"id": f"Tiny|exercise_{i}", "nl_statement": f"Show that {i} + 0 = {i}.",
             "nl_proof": "Adding zero changes nothing.", "src_header": "import data.nat.basic\n",
             "formal_statement": f"theorem exercise_{i} : {i} + 0 = {i} :="} for i in range(3)]


def lora_adapter(dest: Path, seed: int) -> dict[str, bytes]:
    """A rank-2 LoRA adapter, in PEFT's layout, of the tiny Llama staged as the base model."""
    import torch

    spec = importlib.util.spec_from_file_location("full_scale_lora", STARTER_LORA)
    assert spec is not None and spec.loader is not None
    lora = importlib.util.module_from_spec(spec)
    sys.modules["full_scale_lora"] = lora  # its dataclasses look their module up there
    spec.loader.exec_module(lora)
    g = torch.Generator().manual_seed(seed)
    pairs = {f"model.layers.0.self_attn.{m}": (torch.randn(2, 16, generator=g) * 0.1,
                                               torch.randn(16, 2, generator=g) * 0.1)
             for m in ("q_proj", "v_proj")}
    lora.write_adapter(dest, {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"],
                              "task_type": "CAUSAL_LM"}, pairs)
    return {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}


def open_to_sandbox(root: Path) -> None:
    """Let the scorer container's non-root user read a tree under pytest's private temp dirs."""
    for folder in root.parents:
        if folder.stat().st_mode & 0o001:  # the rest of the way up is open already
            break
        folder.chmod(folder.stat().st_mode | 0o055)
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in files:
            path = os.path.join(dirpath, name)
            os.chmod(path, os.stat(path).st_mode | 0o044)


@pytest.fixture(scope="module")
def scorer_image() -> str:
    """The CPU scorer image, built once when missing or out of date."""
    from runner.image import ensure_scorer_image

    ok, why = docker_available()
    require(ok, f"a Docker engine (the scorer runs in its image): {why}")
    return ensure_scorer_image(log=lambda _line: None)


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staged]:
    """Every full-scale asset of the seven tasks, staged once through the real client."""
    require(importlib.util.find_spec("lm_eval") is not None, "lm-eval (full-scale scoring)")
    root = tmp_path_factory.mktemp("full-scale")
    hub = StandInHub().start()
    specs = {s.name: s for s in list_tasks() if s.dir.parent == Path(tiny_hub.__file__).parents[1] / "tasks"}
    seen: set[tuple[str, str]] = set()
    for spec in specs.values():
        for a in spec.assets_for("full"):
            if (a.kind, a.repo) in seen:
                continue
            seen.add((a.kind, a.repo))
            files = staged_files(spec, a, root / "models")
            lfs = tuple(p for p in files if p.endswith((".parquet", ".safetensors")))
            repo = hub.add(a.kind, a.repo, files, lfs=lfs)
            if a.pinned:  # the commit the task declares, as the hub would have it
                repo.commit = a.revision
    home = root / "home"
    AssetStore(home, endpoint=hub.url).fetch(task_assets(specs.values(), "full"))
    open_to_sandbox(home)
    try:
        yield Staged(home, hub, specs)
    finally:
        hub.stop()


def submission(staged: Staged, workspace: Path, task: str) -> Path:
    """A workspace holding a tiny model in model/, of the kind the task's scorer accepts."""
    workspace.mkdir(parents=True, exist_ok=True)
    if task == "llm_merging":  # through the task's own scaffold: the staged base and adapters
        shutil.copytree(load_task(task).dir / "starter", workspace, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
        hub = AssetStore(staged.home).hub_dir("agent")
        env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "main.py", "-m", "llama_avg", "--out", "model", "--no-eval"],
                              cwd=workspace, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    else:
        tiny_hub.causal_lm(workspace / "model", SUBMISSION_TYPE.get(task, "gpt2"))
    open_to_sandbox(workspace)
    return workspace / "model"


async def score_full(staged: Staged, image: str, task: str, workspace: Path) -> dict[str, Any]:
    """The task's full-scale scorer, as the runner runs it: a container of the CPU scorer image
    with no network, the submission and the scorer's staged assets mounted read-only, the hub
    offline."""
    events: list[dict[str, Any]] = []

    async def emit(kind: str, data: dict[str, Any]) -> None:
        events.append({"kind": kind, **data})

    made: list[Sandbox] = []

    def on_cpu(sb_spec: SandboxSpec) -> Sandbox:
        # full scale asks for the task's GPU; this host has none, so the same scorer runs on CPU
        cpu = replace(sb_spec, limits=replace(sb_spec.limits, gpus=0, gpu_ids=()))
        made.append(create_sandbox(cpu, backend="docker"))
        return made[-1]

    spec = staged.tasks[task]
    scorer = Scorer(f"fs-{task}", spec, "full", workspace, image, on_cpu, RunClock(), emit,
                    asset_home=staged.home)
    out = await scorer.score(True, "/workspace/model", ())
    assert events and events[-1]["kind"] == "score" and events[-1]["value"] == out["value"]
    assert [sb.backend for sb in made] == ["docker"] and made[0].spec.image == image
    assert not made[0].spec.network and made[0].spec.docker_network is None  # --network none
    return out


def continuation_logprob(model: Any, tok: Any, context: str, continuation: str) -> float:
    """log P(continuation | context), computed here in torch the way lm-eval's HF model does."""
    import torch

    ctx = tok(context, add_special_tokens=False)["input_ids"] if context else [tok.eos_token_id]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):] if context else tok(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    return float(logp[torch.arange(len(targets)), targets][-len(cont):].sum())


def mmlu_by_hand(model_dir: Path) -> float:
    """MMLU accuracy over the staged tiny set: for each question, the letter of highest
    log-likelihood after lm-eval's prompt, against the answer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    right = total = 0
    for subject in tiny_hub.MMLU_SUBJECTS:
        for doc in tiny_hub.mmlu_rows(subject, 1):
            c = doc["choices"]
            prompt = (f"The following are multiple choice questions (with answers) about "
                      f"{subject.replace('_', ' ')}.\n\n"  # the subject's description in lm-eval
                      f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:")
            scores = [continuation_logprob(model, tok, prompt, f" {letter}") for letter in "ABCD"]
            right += int(max(range(4), key=scores.__getitem__) == doc["answer"])
            total += 1
    return right / total


def blimp_by_hand(model_dir: Path) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    right = total = 0
    for phenomenon in tiny_hub.BLIMP_PHENOMENA:
        for pair in tiny_hub.blimp_rows(phenomenon, 1):
            # no context: lm-eval scores " " + sentence after the end-of-text token, and a tie
            # goes to the first choice, the good sentence
            good = continuation_logprob(model, tok, "", " " + pair["sentence_good"])
            bad = continuation_logprob(model, tok, "", " " + pair["sentence_bad"])
            right += int(good >= bad)
            total += 1
    return right / total


@pytest.mark.parametrize("task", ["llm_efficiency", "edge_llm_compression", "llm_merging"])
async def test_mmlu_tasks_score_through_lm_eval_and_match_a_hand_computation(staged, scorer_image, tmp_path, task):
    model_dir = submission(staged, tmp_path / "ws", task)
    out = await score_full(staged, scorer_image, task, tmp_path / "ws")
    assert out["error"] is None, out
    assert out["metric"] == "mmlu"
    assert math.isclose(out["value"], mmlu_by_hand(model_dir), abs_tol=1e-9)
    lm = out["details"]["lm_eval"]
    assert lm["tasks"] == ["mmlu"] and lm["batch_size"] == 8 and lm["dtype"] == "float32"
    assert lm["version"] not in ("", "unknown")


async def test_baby_lm_scores_blimp_through_lm_eval(staged, scorer_image, tmp_path):
    model_dir = submission(staged, tmp_path / "ws", "baby_lm")
    out = await score_full(staged, scorer_image, "baby_lm", tmp_path / "ws")
    assert out["error"] is None, out
    assert math.isclose(out["value"], blimp_by_hand(model_dir), abs_tol=1e-9)
    assert out["details"]["lm_eval"]["tasks"] == ["blimp"]


@pytest.mark.parametrize("task", ["mini_pile", "edge_llm_training"])
async def test_superglue_tasks_score_the_lm_eval_group(staged, scorer_image, tmp_path, task):
    submission(staged, tmp_path / "ws", task)
    out = await score_full(staged, scorer_image, task, tmp_path / "ws")
    assert out["error"] is None, out
    subs = set(SUPERGLUE)
    assert subs <= set(out["metrics"]) and out["details"]["lm_eval"]["tasks"] == SUPERGLUE
    assert math.isclose(out["value"], sum(out["metrics"][s] for s in subs) / len(subs))
    assert out["details"]["aggregate"] == "mean acc of " + ", ".join(sorted(subs))


TRAIN = r"""
# the prompt's own call: MiniPile from the staged cache, with the hub offline
import json, os
import torch
from datasets import load_dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from mlrb_metrics import log

data = load_dataset("AlgorithmicResearchGroup/minipile")
texts = data["train"]["text"]
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=512, vocab_size=len(tok),
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
for step, text in enumerate(texts[:4]):
    ids = torch.tensor([tok(text)["input_ids"]])
    loss = model(ids, labels=ids).loss
    loss.backward(); opt.step(); opt.zero_grad()
    log(step=step, loss=float(loss))
model.save_pretrained("model"); tok.save_pretrained("model")
print(json.dumps({"splits": sorted(data), "train_rows": len(texts),
                  "cache": os.environ.get("HF_DATASETS_CACHE")}))
"""


async def test_mini_pile_end_to_end_at_full_scale_on_cpu(staged, tmp_path):
    """A scripted agent runs mini_pile at full scale: the prompt's load_dataset call works
    offline in the sandbox, the model it trains is scored through lm-eval, the run recorded."""
    from runner.agents.base import ScriptedAgent
    from runner.journal import Journal, JournalReader
    from runner.sandbox_factory import create_sandbox
    from runner.supervisor import RunRequest, RunSupervisor

    spec = staged.tasks["mini_pile"]
    assert "load_dataset('AlgorithmicResearchGroup/minipile')" in spec.prompt("full")
    plan = [{"name": "write_file", "args": {"path": "train.py", "content": TRAIN}},
            {"name": "bash", "args": {"command": "python3 train.py", "timeout_s": 300}},
            {"name": "submit", "args": {"path": "model", "summary": "a tiny GPT-2"}}]
    journal = Journal(tmp_path / "j.db")
    sup = RunSupervisor(
        RunRequest(run="fs-e2e", task=spec, scale="full", agent_kind="scripted"), journal=journal,
        publish=None, make_sandbox=lambda s: create_sandbox(s, backend="local"),
        agent=ScriptedAgent(plan), workspace=tmp_path / "run" / "workspace", runner_id="test",
        asset_home=staged.home)
    try:
        assert await sup.run() == "succeeded", sup.end_reason
    finally:
        journal.close()
    reader = JournalReader(tmp_path / "j.db")
    try:
        evs = reader.events("fs-e2e", 0, 100000)
        row = reader.get_run("fs-e2e")
    finally:
        reader.close()
    out = "".join(e.data["text"] for e in evs if e.kind == "sandbox.output")
    probe = json.loads(next(ln for ln in out.splitlines() if ln.startswith('{"splits"')))
    assert probe["splits"] == ["test", "train", "validation"] and probe["train_rows"] == 8
    assert [e.data["values"]["loss"] for e in evs if e.kind == "metric" and "loss" in e.data["values"]]
    score = next(e for e in evs if e.kind == "score")
    assert score.data["error"] is None, score.data
    assert score.data["metric"] == "superglue" and 0.0 <= score.data["value"] <= 1.0
    assert score.data["details"]["lm_eval"]["tasks"] == SUPERGLUE
    assert row["status"] == "succeeded" and row["scale"] == "full"
    assert row["score_metric"] == "superglue" and row["score"] == score.data["value"]


async def test_math_reasoning_scores_the_staged_proofnet_test_split(staged, scorer_image, tmp_path):
    submission(staged, tmp_path / "ws", "math_reasoning")
    out = await score_full(staged, scorer_image, "math_reasoning", tmp_path / "ws")
    assert out["error"] is None, out
    heldout = proofnet_rows()
    assert out["details"]["items"] == len(heldout) > 0
    assert out["details"]["heldout"] == f"{PROOFNET} test.jsonl"
    named = "compile_rate" if out["details"]["checker"] == "lean" else "syntax_rate"
    assert out["metrics"][named] == out["value"] == out["metrics"]["lean_check_rate"]
    assert 0.0 <= out["metrics"]["rouge_l"] <= 1.0 and 0.0 <= out["metrics"]["bleu"] <= 100.0
    refs = {r["formal_statement"] for r in heldout}
    assert {e["reference"] for e in out["details"]["examples"]} <= refs
