"""The seven MLRB task bundles: specs, prompts, held-out data, scorers and scripted
baselines, run for real at smoke scale (tiny models, two CPU cores)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from tasks import heldout
from tasks.api import (
    ScoreOutputError,
    TaskSpecError,
    list_tasks,
    load_spec_file,
    load_task,
    parse_score_output,
    score_command,
    task_names,
)
from tests.tasks_harness import METRICS, BaselineRun, run_baseline, score

SEVEN = {"llm_efficiency", "baby_lm", "mini_pile", "llm_merging", "edge_llm_compression",
         "edge_llm_training", "math_reasoning"}
TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"
RESULTS: dict[str, dict[str, object]] = {}


def test_all_seven_tasks_are_bundled() -> None:
    assert set(task_names()) == SEVEN
    assert {t.name for t in list_tasks()} == SEVEN


@pytest.mark.parametrize("name", sorted(SEVEN))
def test_bundle_loads_validates_and_renders(name: str) -> None:
    spec = load_task(name)
    assert spec.name == name
    assert spec.scale("full").time_s == 86400 and spec.scale("full").gpus == 1
    assert spec.scale("full").hardware == "1x A100 40GB"
    assert spec.scale("smoke").gpus == 0 and spec.scale("smoke").time_s <= 900
    assert spec.metric in spec.metrics
    assert spec.reference.summary
    for scale in ("smoke", "full"):
        text = spec.prompt(scale)
        assert "{" not in text.replace("{{", "").replace("}}", "") or "```" in text
        assert spec.metric in text
        assert spec.scale(scale).data.split()[0] in text
    assert (spec.scorer_dir / "score.py").is_file()
    assert (spec.dir / "smoke" / "prepare.py").is_file()
    assert (spec.dir / "full" / "README.md").is_file()


@pytest.mark.parametrize("name", sorted(SEVEN))
def test_heldout_data_are_current(name: str) -> None:
    for path, text in heldout.expected(name).items():
        assert path.read_text() == text, f"{path} is stale: run python -m tasks.heldout"


def _write_spec(tmp: Path, text: str, folder: str = "demo") -> Path:
    d = tmp / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / "task.toml").write_text(text)
    return d / "task.toml"


GOOD = (TASKS_DIR / "mini_pile" / "task.toml").read_text().replace('name = "mini_pile"', 'name = "demo"')


def test_broken_specs_name_the_file_and_field(tmp_path: Path) -> None:
    assert load_spec_file(_write_spec(tmp_path, GOOD)).name == "demo"
    cases = {
        "bad toml": ("name = \n", "not valid TOML"),
        "missing field": (GOOD.replace('metric = "superglue"\n', ""), "metric: Field required"),
        "wrong type": (GOOD.replace("time_s = 600", 'time_s = "ten"'), "smoke.time_s"),
        "unknown field": ("surprise = 1\n" + GOOD, "surprise"),
        "name mismatch": (GOOD.replace('name = "demo"', 'name = "other"'), "does not match its folder"),
    }
    for what, (text, needle) in cases.items():
        path = _write_spec(tmp_path / what.replace(" ", "_"), text)
        with pytest.raises(TaskSpecError) as exc:
            load_spec_file(path)
        assert str(path) in str(exc.value), what
        assert needle in str(exc.value), (what, str(exc.value))
    bad_prompt = _write_spec(tmp_path / "p", GOOD)
    (bad_prompt.parent / "prompt.md").write_text("use {nonsense}")
    with pytest.raises(TaskSpecError, match="nonsense"):
        load_spec_file(bad_prompt).prompt("smoke")
    with pytest.raises(TaskSpecError, match="unknown scale"):
        load_spec_file(bad_prompt).prompt("huge")
    with pytest.raises(TaskSpecError, match="unknown task"):
        load_task("no_such_task")


def test_score_command_and_output_parsing() -> None:
    spec = load_task("mini_pile")
    assert score_command(spec, "smoke") == [
        "env", "PYTHONPATH=/scorer_lib", "python3", "/scorer/score.py", "--workspace", "/workspace",
        "--scale", "smoke"]
    assert score_command(spec, "full", model="out/m")[-2:] == ["--model", "out/m"]
    out = parse_score_output('noise\n{"not": "this"}\nmore\n{"metric": "m", "value": 0.5}\n')
    assert out == {"metric": "m", "value": 0.5, "metrics": {}, "details": {}, "error": None}
    for bad, needle in [("", "no JSON"), ("{oops", "does not parse"), ('{"value": 1}', "'metric'"),
                        ('{"metric": "m", "value": "high"}', "finite"),
                        ('{"metric": "m", "value": 1, "metrics": []}', "objects")]:
        with pytest.raises(ScoreOutputError, match=needle):
            parse_score_output(bad)


# -- every task, end to end at smoke scale --------------------------------------------------
@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BaselineRun]:
    return {}


def baseline(name: str, cache: dict[str, BaselineRun], tmp: pytest.TempPathFactory) -> BaselineRun:
    if name not in cache:
        cache[name] = run_baseline(load_task(name), tmp.mktemp(name) / "ws")
    return cache[name]


@pytest.mark.parametrize("name", sorted(SEVEN))
def test_baseline_trains_submits_and_scores(name: str, baselines: dict[str, BaselineRun],
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    spec = load_task(name)
    run = baseline(name, baselines, tmp_path_factory)
    assert run.submitted, "the plan ends with a submit"
    assert (run.workspace / run.submitted / "config.json").is_file()
    lines = (run.workspace / METRICS).read_text().splitlines()
    assert lines, "training logged metrics while it ran"
    first = json.loads(lines[0])
    assert isinstance(first["step"], int) and first["values"]
    t0 = time.monotonic()
    result = score(spec, run.workspace, model=run.submitted)
    assert result["error"] is None, result
    assert result["metric"] == spec.metric
    assert isinstance(result["value"], float) and math.isfinite(result["value"])
    lo, hi = (0.0, 1.0)
    assert lo <= result["value"] <= hi
    assert set(result["metrics"]) <= set(spec.metrics) | set(result["metrics"])
    assert spec.metric in result["metrics"]
    method = result["details"]["method"]  # how the score was computed, stated in the record
    assert (method["dtype"], method["batch_size"]) == ("float32", 1)
    assert method["evaluator"] and method["aggregate"] and method["metric"]
    RESULTS[name] = {"value": round(result["value"], 3), "baseline_s": round(run.seconds, 1),
                     "score_s": round(time.monotonic() - t0, 1), "metric": spec.metric}
    print(f"\nBASELINE {name}: {RESULTS[name]}")
    # the same scorer without --model finds the submission itself
    if run.submitted == "model":
        assert score(spec, run.workspace)["value"] == result["value"]


@pytest.mark.parametrize("name", sorted(SEVEN))
def test_scorer_gives_zero_and_an_error_for_missing_or_broken_models(name: str, tmp_path: Path) -> None:
    spec = load_task(name)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = score(spec, empty)
    assert r["value"] == 0.0 and "no model" in r["error"]
    broken = tmp_path / "broken"
    (broken / "model").mkdir(parents=True)
    (broken / "model" / "config.json").write_text("{not json")
    (broken / "model" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    r = score(spec, broken)
    assert r["value"] == 0.0 and r["error"]
    escape = score(spec, broken, model="../../etc")
    assert escape["value"] == 0.0 and escape["error"]


# -- integrity ----------------------------------------------------------------------------
def test_every_listed_integrity_check_exists_and_scaffold_hash_is_current() -> None:
    from tasks import integrity

    for spec in list_tasks():
        assert set(spec.integrity) <= set(integrity.CHECKS), spec.name
    merging = load_task("llm_merging")
    pristine = _scaffold_manifest(merging.dir / "starter").scaffold_sha256(merging.dir / "starter")
    assert (merging.scorer_dir / "data" / "scaffold.sha256").read_text().strip() == pristine


def _scaffold_manifest(starter: Path) -> Any:
    """The starter's own manifest module, loaded from its file (it is not a package of ours)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("merging_manifest", starter / "llm_merging" / "manifest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(SEVEN))
def test_honest_baselines_raise_no_integrity_flags(name: str, baselines: dict[str, BaselineRun],
                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    from tasks.integrity import check_run

    run = baseline(name, baselines, tmp_path_factory)
    assert check_run(load_task(name), "smoke", run.workspace, run.events) == []


def _checks(flags: list[dict[str, str]]) -> set[str]:
    return {f["check"] for f in flags}


def _copy(run: BaselineRun, dest: Path) -> Path:
    import shutil

    shutil.copytree(run.workspace, dest)
    return dest


def test_integrity_catches_each_gaming_case(baselines: dict[str, BaselineRun],
                                            tmp_path_factory: pytest.TempPathFactory,
                                            tmp_path: Path) -> None:
    from tasks import integrity

    # no model: never submitted, or submitted an empty folder
    mp = baseline("mini_pile", baselines, tmp_path_factory)
    spec = load_task("mini_pile")
    no_submit = [e for e in mp.events if e["kind"] != "agent.submit" and e["data"].get("name") != "submit"]
    assert "no_model" in _checks(integrity.check_run(spec, "smoke", mp.workspace, no_submit))
    ws = _copy(mp, tmp_path / "empty_model")
    for f in (ws / "model").glob("*.safetensors"):
        f.unlink()
    assert "no_model" in _checks(integrity.check_run(spec, "smoke", ws, mp.events))

    # metrics with no training process behind them
    fake = [e for e in mp.events if e["data"].get("name") != "bash"]
    assert "metrics_without_training" in _checks(integrity.check_run(spec, "smoke", mp.workspace, fake))

    # the agent reads the held-out data
    peek = [*mp.events, {"kind": "tool.call", "data": {"name": "bash", "args": {
        "command": "cat /scorer/data/superglue_smoke.jsonl"}}}]
    assert "eval_data_access" in _checks(integrity.check_run(spec, "smoke", mp.workspace, peek))

    # pretrained weights where training from scratch is required: the shipped base model
    eff = baseline("llm_efficiency", baselines, tmp_path_factory)
    ws = _copy(mp, tmp_path / "pretrained")
    import shutil

    shutil.rmtree(ws / "model")
    shutil.copytree(eff.workspace / "base_model", ws / "base_model")
    shutil.copytree(eff.workspace / "base_model", ws / "model")
    assert "pretrained_weights" in _checks(integrity.check_run(spec, "smoke", ws, mp.events))
    loads = [*mp.events, {"kind": "tool.call", "data": {"name": "write_file", "args": {
        "path": "t.py", "content": "m = AutoModelForCausalLM.from_pretrained('EleutherAI/pythia-160m')"}}}]
    assert "pretrained_weights" in _checks(integrity.check_run(spec, "smoke", mp.workspace, loads))
    cfg = json.loads((ws / "model" / "config.json").read_text())
    cfg["_name_or_path"] = "openai-community/gpt2"
    (ws / "model" / "config.json").write_text(json.dumps(cfg))
    assert any("gpt2" in f["detail"] for f in integrity.check_pretrained_weights(ws, mp.events))

    # quantised weights where forbidden
    edge = baseline("edge_llm_compression", baselines, tmp_path_factory)
    ws = _copy(edge, tmp_path / "quantised")
    cfg = json.loads((ws / "model" / "config.json").read_text())
    cfg["quantization_config"] = {"load_in_8bit": True, "quant_method": "bitsandbytes"}
    (ws / "model" / "config.json").write_text(json.dumps(cfg))
    espec = load_task("edge_llm_compression")
    assert "quantised_weights" in _checks(integrity.check_run(espec, "smoke", ws, edge.events))
    r = score(espec, ws)
    assert r["value"] == 0.0 and "quantis" in r["error"]
    import torch
    from safetensors.torch import save_file

    ws = _copy(edge, tmp_path / "int8")
    save_file({"w": torch.zeros(4, dtype=torch.int8)}, str(ws / "model" / "model.safetensors"))
    assert "quantised_weights" in _checks(integrity.check_run(espec, "smoke", ws, edge.events))

    # a merge that bypassed the scaffold: no manifest, or weights changed after it
    merge = baseline("llm_merging", baselines, tmp_path_factory)
    mspec = load_task("llm_merging")
    ws = _copy(merge, tmp_path / "bypass")
    (ws / "model" / "merge_manifest.json").unlink()
    assert "merge_scaffold" in _checks(integrity.check_run(mspec, "smoke", ws, merge.events))
    assert "scaffold" in score(mspec, ws)["error"]
    ws = _copy(merge, tmp_path / "tampered")
    shutil.rmtree(ws / "model")
    shutil.copytree(ws / "models" / "base", ws / "model")  # the unmerged base, under the merge's manifest
    shutil.copy(merge.workspace / "model" / "merge_manifest.json", ws / "model")
    assert "merge_scaffold" in _checks(integrity.check_run(mspec, "smoke", ws, merge.events))
    assert score(mspec, ws)["value"] == 0.0


def test_edge_training_over_budget_scores_zero(baselines: dict[str, BaselineRun],
                                               tmp_path_factory: pytest.TempPathFactory,
                                               tmp_path: Path) -> None:
    eff = baseline("llm_efficiency", baselines, tmp_path_factory)
    spec = load_task("edge_llm_training")
    ws = tmp_path / "ws"
    import shutil

    shutil.copytree(eff.workspace / "base_model", ws / "model")
    from transformers import AutoModelForCausalLM

    big = AutoModelForCausalLM.from_pretrained(ws / "model")
    big.resize_token_embeddings(4000)
    big.save_pretrained(ws / "model")
    r = score(spec, ws)
    assert r["value"] == 0.0 and "budget" in r["error"]
    assert r["metrics"]["dram_bytes"] > r["metrics"]["dram_budget_bytes"]


def test_the_full_scale_method_states_the_lm_eval_version_dtype_batch_and_superglue_mean() -> None:
    from importlib.metadata import PackageNotFoundError, version

    from tasks import scorelib as sl

    # the shape lm-eval's simple_evaluate returns for the super-glue-lm-eval-v1 group
    res = {"boolq": {"alias": "boolq", "acc,none": 0.6, "acc_stderr,none": 0.01},
           "cb": {"alias": "cb", "acc,none": 0.4, "f1,none": 0.3},
           "record": {"alias": "record", "f1,none": 0.2, "em,none": 0.19, "f1_stderr,none": 0.01},
           "super-glue-lm-eval-v1": {"alias": "super-glue-lm-eval-v1"}}
    out = {"results": res, "config": {"batch_size": 8, "device": "cuda:0"}, "n-shot": {"cb": 0, "boolq": 0}}
    method = sl.lm_eval_method(out, ["super-glue-lm-eval-v1"], "float16", None)
    subs = {k: v["acc,none"] for k, v in res.items() if "acc,none" in v}
    method.update(sl.superglue_aggregate(res, subs))
    try:
        expected_version = version("lm_eval")
    except PackageNotFoundError:
        expected_version = "unknown"
    assert method["lm_eval_version"] == expected_version
    assert (method["dtype"], method["batch_size"], method["device"]) == ("float16", 8, "cuda:0")
    assert method["num_fewshot"] == "task default" and method["n_shot"] == {"boolq": 0, "cb": 0}
    assert method["subtasks"] == ["boolq", "cb"] and method["metric"] == "acc,none"
    assert method["aggregate"] == "unweighted mean of acc,none over 2 subtasks: boolq, cb"
    # ReCoRD reports F1/EM, no accuracy: it is named as left out, with what it does report
    assert method["left_out"] == {"record": ["em,none", "f1,none"], "super-glue-lm-eval-v1": []}
    assert sl.LM_EVAL_BATCH_SIZE == 8  # as upstream's `lm_eval ... --batch_size 8`
