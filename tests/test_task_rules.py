"""The tasks as upstream defines them: prompts that name exactly the staged assets, the rules
each task states (the approved base-model families, the merge's hour, the Lean check named for
what ran), and the upstream provenance `mlrb tasks show` prints."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tasks.api import list_tasks, load_task
from tests.tasks_harness import run_baseline, score

SEVEN = {"llm_efficiency", "baby_lm", "mini_pile", "llm_merging", "edge_llm_compression",
         "edge_llm_training", "math_reasoning"}
LOAD_CALL = re.compile(r"(?:load_dataset|from_pretrained)\('([^']+)'")


@pytest.mark.parametrize("name", sorted(SEVEN))
def test_the_full_prompt_names_exactly_the_staged_agent_assets(name: str) -> None:
    spec = load_task(name)
    text = spec.prompt("full")
    agent = {a.repo for a in spec.assets_for("full", "agent")}
    scorer_only = {a.repo for a in spec.assets_for("full", "scorer")} - agent
    assert agent, f"{name} stages nothing for its agent"
    for repo in agent:
        assert f"`{repo}`" in text, f"{name}: the prompt does not name {repo}"
    for repo in scorer_only:
        assert repo not in text, f"{name}: the prompt names the scorer-only {repo}"
    called = set(LOAD_CALL.findall(text))
    assert called and called <= agent, f"{name}: the prompt loads {called - agent}, which is not staged"
    for a in spec.assets_for("full", "agent"):
        for config in a.configs:
            assert f"load_dataset('{a.repo}', '{config}')" in text
    smoke = spec.prompt("smoke")
    assert "Nothing is staged from the hub at this scale" in smoke
    assert not LOAD_CALL.findall(smoke)


def test_a_pinned_asset_is_named_with_its_commit() -> None:
    text = load_task("llm_merging").prompt("full")
    assert "`meta-llama/Llama-2-7b-hf` at commit 01c7f73d771d" in text


@pytest.mark.parametrize("name", sorted(SEVEN))
def test_each_task_says_where_it_comes_from_upstream(name: str) -> None:
    up = load_task(name).upstream
    assert up is not None and up.repo == "AlgorithmicResearchGroup/ML-Research-Agent-Tasks"
    assert up.task == name and up.path == "mlrb_agent_tasks/prompts.py"
    assert {"task", "compute", "evaluation"} <= set(up.fields)
    assert up.departures, f"{name}: say where the task departs from upstream, and why"
    out = subprocess.run([sys.executable, "-m", "mlrb_tui.cli", "tasks", "show", name], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    shown = out.split("----- upstream -----\n", 1)[1].split("----- prompt", 1)[0]
    assert shown.startswith(f"{name} in github.com/{up.repo}, {up.path}")
    assert all(f"departs: {d}" in shown for d in up.departures)


def test_compute_is_what_upstream_states() -> None:
    specs = {s.name: s for s in list_tasks()}
    for name in ("llm_efficiency", "baby_lm"):  # "One A100 40GB GPU, 128GB of RAM, 500GB of Disk"
        assert specs[name].scale("full").memory_gb == 128
    assert all(s.scale("full").gpus == 1 for s in specs.values())
    for s in specs.values():  # each task says what upstream's prompt states, in its words and as figures
        up = s.upstream.compute  # type: ignore[union-attr]
        assert up is not None, f"{s.name}: [upstream.compute] missing"
        assert (up.gpus, up.gpu, up.time_limit) == (s.scale("full").gpus, "A100 40GB", "24 hours")
        assert up.stated.split(";")[0] in s.upstream.fields["compute"]  # type: ignore[union-attr]
        assert s.scale("full").memory_gb >= (up.ram_gb or 0)
        assert (up.ram_gb, up.disk_gb) == ((128, 500) if s.name in ("llm_efficiency", "baby_lm") else (None, None))


@pytest.mark.parametrize("name", ["llm_efficiency", "mini_pile"])
def test_tasks_show_gives_upstreams_compute_beside_full_scales(name: str) -> None:
    out = subprocess.run([sys.executable, "-m", "mlrb_tui.cli", "tasks", "show", name], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    shown = out.split("----- compute -----\n", 1)[1].split("----- prompt", 1)[0].splitlines()
    full = load_task(name).scale("full")
    ram = "128 GB" if name == "llm_efficiency" else "states none"
    disk = "500 GB" if name == "llm_efficiency" else "states none"
    assert shown[1] == "  GPU          upstream 1x A100 40GB; full scale here 1 GPU (1x A100 40GB)"
    assert shown[2] == f"  RAM          upstream {ram}; full scale here {full.memory_gb:g} GB"
    assert shown[3] == f"  disk         upstream {disk}; full scale here {full.disk_gb:g} GB workspace quota"
    assert shown[4] == "  time         upstream 24 hours; full scale here 24 h on the clock"


def test_baby_lm_forbids_what_upstream_forbids_and_no_more() -> None:
    spec = load_task("baby_lm")
    text = spec.prompt("full")
    rules = text.split("## Rules", 1)[1].split("## Evaluation", 1)[0] + text.split("## Data", 1)[1].split("## Models", 1)[0]
    assert "tokenizer" not in rules.lower()  # upstream allows an existing tokenizer
    assert "Do not train on BLiMP" in text and "no fine-tuning of a pretrained model" in text


def _scorer_module(name: str) -> Any:
    path = load_task(name).scorer_dir / "score.py"
    sys.path.insert(0, str(path.parents[2]))  # scorelib beside the bundles
    try:
        mod_spec = importlib.util.spec_from_file_location(f"{name}_score", path)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parents[2]))
    return module


def test_the_prompt_lists_the_families_the_efficiency_scorer_approves() -> None:
    families = _scorer_module("llm_efficiency").APPROVED_FAMILIES
    text = load_task("llm_efficiency").prompt("full")
    rules = " ".join(text.split("## Rules", 1)[1].split("## Evaluation", 1)[0].split())
    listed = rules.split("fine-tune it: ", 1)[1].split(". The scorer", 1)[0]
    assert listed.replace(" (not instruction-tuned models)", "") == ", ".join(families)


@pytest.fixture(scope="module")
def efficiency_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    spec = load_task("llm_efficiency")
    return spec, run_baseline(spec, tmp_path_factory.mktemp("efficiency") / "ws")


def test_a_model_outside_the_approved_families_scores_zero(efficiency_run: Any, tmp_path: Path) -> None:
    spec, run = efficiency_run
    ok = score(spec, run.workspace, model=run.submitted)
    assert ok["error"] is None and "LLaMA or Llama 2" in ok["details"]["family"].split(" / ")
    ws = tmp_path / "ws"
    import shutil

    shutil.copytree(run.workspace / run.submitted, ws / "model")
    cfg = json.loads((ws / "model" / "config.json").read_text())
    (ws / "model" / "config.json").write_text(json.dumps({**cfg, "model_type": "phi"}))
    bad = score(spec, ws, model="model")
    assert bad["value"] == 0.0
    assert "model_type 'phi' is not of an approved base-model family" in bad["error"]


@pytest.fixture(scope="module")
def merging_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    spec = load_task("llm_merging")
    return spec, run_baseline(spec, tmp_path_factory.mktemp("merging") / "ws")


def _resign(model: Path, pristine: str, **changes: Any) -> None:
    manifest = json.loads((model / "merge_manifest.json").read_text())
    manifest.pop("signature")
    manifest.update(changes)
    sig = hmac.new(pristine.encode(), json.dumps(manifest, sort_keys=True).encode(), hashlib.sha256).hexdigest()
    (model / "merge_manifest.json").write_text(json.dumps({**manifest, "signature": sig}))


def test_merging_plus_evaluation_over_an_hour_scores_zero(merging_run: Any, tmp_path: Path) -> None:
    import shutil

    spec, run = merging_run
    ok = score(spec, run.workspace, model=run.submitted)
    assert ok["error"] is None
    merge_s = ok["metrics"]["merge_seconds"]
    assert merge_s < ok["metrics"]["merge_eval_seconds"] < 3600  # the evaluation's time is added
    ws = tmp_path / "ws"
    shutil.copytree(run.workspace, ws)
    pristine = (spec.scorer_dir / "data" / "scaffold.sha256").read_text().strip()
    _resign(ws / run.submitted, pristine, seconds=3600.0)
    late = score(spec, ws, model=run.submitted)
    assert late["value"] == 0.0 and "merging plus evaluation must take under 1 hour" in late["error"]
    # just under the hour for the merge: the scorer's own evaluation time tips it over
    _resign(ws / run.submitted, pristine, seconds=3599.99)
    tipped = score(spec, ws, model=run.submitted)
    assert tipped["value"] == 0.0 and "it must take under 1 hour" in tipped["error"]
    assert tipped["metrics"]["merge_eval_seconds"] >= 3600


def test_the_lean_check_is_named_for_what_ran(tmp_path_factory: pytest.TempPathFactory) -> None:
    spec = load_task("math_reasoning")
    run = run_baseline(spec, tmp_path_factory.mktemp("math") / "ws")
    r = score(spec, run.workspace, model=run.submitted)
    assert r["error"] is None and r["metric"] == "lean_check_rate"
    checker = r["details"]["checker"]
    named, other = ("compile_rate", "syntax_rate") if checker == "lean" else ("syntax_rate", "compile_rate")
    assert r["metrics"][named] == r["value"] and other not in r["metrics"]
    assert {"rouge_l", "bleu"} <= set(r["metrics"])
