"""The seven MLRB task bundles: specs, prompts, held-out data, scorers and scripted
baselines, run for real at smoke scale (tiny models, two CPU cores)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

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
def test_scorer_library_copy_and_heldout_data_are_current(name: str) -> None:
    canonical = (TASKS_DIR / "scorelib.py").read_bytes()
    assert (TASKS_DIR / name / "scorer" / "scorelib.py").read_bytes() == canonical, \
        "run: python -m tasks.scorelib --sync"
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
        "python3", "/scorer/score.py", "--workspace", "/workspace", "--scale", "smoke"]
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
