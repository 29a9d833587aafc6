"""The sandbox and scorer images: what is in them, their locks, the GPU build's rendering, when
they are reused, and the in-sandbox metrics helper."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from runner import image
from runner.image import (
    DEFAULT_BASE,
    DEFAULT_IMAGE,
    DEFAULT_SCORER_IMAGE,
    FINGERPRINT_LABEL,
    KIND_LABEL,
    KINDS,
    SANDBOX_CPU,
    SANDBOX_GPU,
    SCORER_CPU,
    SCORER_GPU,
    ImageError,
    Pin,
    build_image,
    ensure_scorer_image,
    fingerprint,
    read_lock,
    render_context,
)
from runner.metrics import parse_metrics_line

AGENT_PACKAGES = ("torch", "transformers", "datasets", "accelerate", "peft", "evaluate",
                  "tokenizers", "sentencepiece", "safetensors", "lm-eval", "scikit-learn")
SCORER_PACKAGES = ("torch", "transformers", "accelerate", "datasets", "lm-eval", "sacrebleu", "rouge-score")


@pytest.fixture(scope="session")
def sandbox_image(docker_client: Any) -> str:
    return build_image(log=lambda line: None, client=docker_client)


@pytest.fixture(scope="session")
def scorer_image(sandbox_image: str, docker_client: Any) -> str:
    return ensure_scorer_image(log=lambda line: None, client=docker_client)


def _pins(kind: image.ImageKind) -> dict[str, str]:
    return {p.name: p.version for p in read_lock(kind)}


@pytest.fixture
def mlrb_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    path = Path(image.__file__).with_name("sandbox_image") / "mlrb_metrics.py"
    spec = importlib.util.spec_from_file_location("mlrb_metrics_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("MLRB_METRICS_FILE", str(tmp_path / ".mlrb" / "metrics.jsonl"))
    return module


def _run(docker_client: Any, tag: str, script: str) -> str:
    out = docker_client.containers.run(tag, ["bash", "-lc", script], remove=True,
                                       network_mode="none", stderr=True)
    return out.decode()


def test_image_contents(sandbox_image: str, docker_client: Any) -> None:
    assert sandbox_image == DEFAULT_IMAGE
    out = _run(docker_client, sandbox_image,
               "id -un; id -u; stat -c %u /workspace /workspace/.mlrb; echo $HOME; "
               "command -v timeout bash; "
               "python3 -c 'import torch, transformers, safetensors, numpy, tokenizers, mlrb_metrics;"
               "print(torch.__version__, torch.cuda.is_available(), mlrb_metrics.metrics_file())'; "
               "python3 -c 'import datasets, accelerate, peft, evaluate, sentencepiece, sklearn;"
               "from importlib.metadata import version; print(version(\"lm-eval\"), "
               "version(\"datasets\"))'")
    lines = out.split()
    assert lines[:6] == ["agent", "1000", "1000", "1000", "/home/agent", "/usr/bin/timeout"]
    assert lines[7] == "2.13.0+cpu"
    assert lines[9] == "/workspace/.mlrb/metrics.jsonl"
    pins = _pins(SANDBOX_CPU)  # the image holds exactly what its lock pins
    assert lines[10:12] == [pins["lm-eval"], pins["datasets"]]
    attrs = docker_client.images.get(sandbox_image).attrs
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["PYTHONUNBUFFERED"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert env["TRANSFORMERS_OFFLINE"] == "1"
    assert attrs["Config"]["User"] == "agent"
    base_id = docker_client.images.get(DEFAULT_BASE).id
    assert attrs["Config"]["Labels"][FINGERPRINT_LABEL] == fingerprint(base_id)
    assert attrs["Config"]["Labels"][KIND_LABEL] == "sandbox-cpu"


def test_unchanged_image_is_reused(sandbox_image: str, docker_client: Any) -> None:
    before = docker_client.images.get(sandbox_image).id
    lines: list[str] = []
    assert build_image(log=lines.append, client=docker_client) == sandbox_image
    assert docker_client.images.get(sandbox_image).id == before
    assert len(lines) == 1 and "is up to date" in lines[0]


def test_fingerprint_follows_the_base() -> None:
    assert fingerprint("sha256:aaa") == fingerprint("sha256:aaa")
    assert fingerprint("sha256:aaa") != fingerprint("sha256:bbb")


def test_missing_base_is_a_clear_error(docker_client: Any) -> None:
    with pytest.raises(ImageError, match=r"mlrb-base:nope is missing: run `mlrb image base` first"):
        build_image(tag="mlrb-sandbox:never", base="mlrb-base:nope", client=docker_client)
    assert not image.base_exists("mlrb-base:nope", client=docker_client)
    assert image.base_exists(DEFAULT_BASE, client=docker_client)


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    assert image.default_image() == DEFAULT_IMAGE and image.default_base() == DEFAULT_BASE
    monkeypatch.setenv("MLRB_SANDBOX_IMAGE", "lab/sandbox:7")
    monkeypatch.setenv("MLRB_BASE_IMAGE", "lab/base:1")
    assert image.default_image() == "lab/sandbox:7" and image.default_base() == "lab/base:1"


def test_wheelhouse_is_reused_from_the_cache(mlrb_home: Path) -> None:
    assert image.wheel_cache_dir() == mlrb_home / "cache" / "wheels"
    first = image.wheel_cache_dir()
    # a finished wheelhouse for the current requirements is taken as it is
    key = hashlib.sha256(image._requirements().encode()).hexdigest()[:16]
    house = first / key
    house.mkdir(parents=True)
    (house / "complete.json").write_text(json.dumps({"wheels": []}))
    lines: list[str] = []
    assert image.prepare_wheelhouse(log=lines.append) == house
    assert lines == [f"reusing wheelhouse {house}"]


def test_build_base_without_debootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "find_debootstrap", lambda: None)
    with pytest.raises(ImageError, match="debootstrap is not installed"):
        image.build_base("mlrb-base:never")


# -- lock files and the GPU build's rendering (no Docker, nothing downloaded) -----------------

@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.key)
def test_each_lock_pins_the_whole_closure_of_its_current_input(kind: image.ImageKind) -> None:
    pins = read_lock(kind)
    names = [p.name for p in pins]
    assert names == sorted(set(names))  # one exact pin a package, sorted
    assert all(re.fullmatch(r"[A-Za-z0-9.+!]+", p.version) for p in pins)
    assert set(image.top_level(kind)) <= set(names)
    # a lock written from another input is stale: `mlrb image lock` refreshes it
    assert image.lock_input_hash(kind) == image.input_hash(kind)
    wanted = AGENT_PACKAGES if kind.role == "sandbox" else SCORER_PACKAGES
    assert set(wanted) <= set(names)


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_the_scorer_lock_agrees_with_its_sandbox_lock(flavour: str) -> None:
    scorer = _pins(SCORER_CPU if flavour == "cpu" else SCORER_GPU)
    sandbox = _pins(SANDBOX_CPU if flavour == "cpu" else SANDBOX_GPU)
    assert {n: v for n, v in scorer.items() if n in sandbox} == {n: sandbox[n] for n in scorer
                                                                  if n in sandbox}


def test_torch_is_the_cpu_wheel_in_the_cpu_locks_and_a_cuda_build_in_the_gpu_locks() -> None:
    for kind in (SANDBOX_CPU, SCORER_CPU):
        pins = _pins(kind)
        assert pins["torch"] == f"{image.TORCH_VERSION}+cpu"
        assert not [n for n in pins if n.startswith("nvidia-")]
    for kind in (SANDBOX_GPU, SCORER_GPU):
        pins = _pins(kind)
        assert pins["torch"] == image.TORCH_VERSION  # PyPI's linux wheel: the CUDA build
        cuda = [n for n in pins if n.startswith("nvidia-")]
        assert any(n.startswith("nvidia-cuda-runtime") for n in cuda), cuda
        assert any(n.startswith("nvidia-cudnn") for n in cuda), cuda
        assert any(n.startswith("nvidia-cublas") for n in cuda), cuda
    runtime = image.cuda_version()  # what a GPU host's driver must support
    assert runtime is not None and runtime >= (12, 0)
    assert image.cuda_version(SANDBOX_CPU) is None


def test_the_gpu_dockerfile_and_lock_render_with_a_configurable_base(tmp_path: Path) -> None:
    rendered = render_context(SANDBOX_GPU, tmp_path, "lab/cuda-base:12", "sha256:feed")
    assert rendered.buildargs == {"BASE": "lab/cuda-base:12", "FLAVOUR": "gpu"}
    assert rendered.labels == {FINGERPRINT_LABEL: fingerprint("sha256:feed", SANDBOX_GPU),
                               KIND_LABEL: "sandbox-gpu"}
    dockerfile = (tmp_path / rendered.dockerfile).read_text()
    assert "FROM ${BASE} AS build" in dockerfile and "\nFROM ${BASE}\n" in dockerfile
    assert "-r /wheels/requirements.txt" in dockerfile and "--no-index" in dockerfile
    installed = (tmp_path / "wheels" / "requirements.txt").read_text()
    lines = {ln.split("#")[0].strip() for ln in installed.splitlines()} - {""}
    assert lines == {f"{p.name}=={p.version}" for p in read_lock(SANDBOX_GPU)}
    assert f"torch=={image.TORCH_VERSION}" in lines
    assert not list((tmp_path / "wheels").glob("*.whl"))  # rendering downloads nothing
    # the same Dockerfile serves both builds; the fingerprint tells them apart
    assert (tmp_path / "Dockerfile").read_bytes() == (image.CONTEXT_DIR / "Dockerfile").read_bytes()
    assert fingerprint("sha256:feed", SANDBOX_GPU) != fingerprint("sha256:feed", SANDBOX_CPU)
    (tmp_path / "scorer").mkdir()
    scorer = render_context(SCORER_GPU, tmp_path / "scorer", "mlrb-sandbox-gpu:latest", "sha256:b")
    assert scorer.buildargs == {"SANDBOX": "mlrb-sandbox-gpu:latest", "FLAVOUR": "gpu"}
    assert "FROM ${SANDBOX}" in (tmp_path / "scorer" / scorer.dockerfile).read_text()


def test_the_gpu_base_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert image.default_base("gpu") == DEFAULT_BASE
    monkeypatch.setenv("MLRB_GPU_BASE_IMAGE", "lab/cuda-base:12")
    assert image.default_base("gpu") == "lab/cuda-base:12" and image.default_base() == DEFAULT_BASE
    monkeypatch.setenv("MLRB_GPU_IMAGE", "lab/sandbox-gpu:3")
    assert SANDBOX_GPU.default_tag() == "lab/sandbox-gpu:3"


def test_a_report_becomes_sorted_exact_pins_with_source_only_packages_marked() -> None:
    report = {"install": [
        {"metadata": {"name": "Rouge_Score", "version": "0.1.2"},
         "download_info": {"url": "https://example.invalid/rouge_score-0.1.2.tar.gz"}},
        {"metadata": {"name": "torch", "version": "2.13.0+cpu"},
         "download_info": {"url": "file:///w/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl"}},
    ]}
    pins = image.pins_from_report(report)
    assert pins == [Pin("rouge-score", "0.1.2", source_only=True), Pin("torch", "2.13.0+cpu")]
    assert [p.line() for p in pins] == ["rouge-score==0.1.2  # source only", "torch==2.13.0+cpu"]


def test_a_wheel_the_index_lacks_is_named_in_the_error(mlrb_home: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "index"  # a real (empty) package index: pip answers as for a missing wheel
    empty.mkdir()
    monkeypatch.setenv("MLRB_GPU_INDEX_URL", empty.as_uri())
    lock = tmp_path / "gpu.txt"
    lock.write_text("nvidia-cudnn-cu13==9.20.0.48\n")
    monkeypatch.setattr(image.ImageKind, "lock_path", property(lambda self: lock))
    with pytest.raises(ImageError) as caught:
        image.prepare_wheelhouse(log=lambda line: None, kind=SANDBOX_GPU)
    message = str(caught.value)
    assert "has no wheel for nvidia-cudnn-cu13==9.20.0.48 (linux x86_64, CPython 3.11)" in message
    assert "torch's CUDA build" in message and "MLRB_GPU_INDEX_URL" in message
    assert "mlrb image lock --gpu" in message


# -- the scorer image ------------------------------------------------------------------------

@pytest.mark.docker
def test_scorer_image_holds_the_evaluation_toolchain(scorer_image: str, sandbox_image: str,
                                                     docker_client: Any) -> None:
    assert scorer_image == DEFAULT_SCORER_IMAGE
    out = _run(docker_client, scorer_image,
               "id -un; echo $MLRB_IMAGE_ROLE $HF_HUB_OFFLINE; python3 -c 'import lm_eval, sacrebleu, "
               "rouge_score, datasets, torch; from importlib.metadata import version as v;"
               "print(v(\"lm-eval\"), v(\"sacrebleu\"), v(\"rouge-score\"), torch.__version__)'")
    pins = _pins(SCORER_CPU)
    assert out.split() == ["agent", "scorer", "1", pins["lm-eval"], pins["sacrebleu"],
                           pins["rouge-score"], pins["torch"]]
    scorer = docker_client.images.get(scorer_image).attrs
    sandbox = docker_client.images.get(sandbox_image).attrs
    assert scorer["Config"]["Labels"][KIND_LABEL] == "scorer-cpu"
    assert scorer["Config"]["Labels"][FINGERPRINT_LABEL] == fingerprint(
        docker_client.images.get(sandbox_image).id, SCORER_CPU)
    # FROM the sandbox image: its layers (torch among them) are shared, not stored twice
    layers = sandbox["RootFS"]["Layers"]
    assert scorer["RootFS"]["Layers"][:len(layers)] == layers
    assert scorer["Size"] - sandbox["Size"] < 50 * 1024**2


@pytest.mark.docker
def test_unchanged_scorer_image_is_reused(scorer_image: str, docker_client: Any) -> None:
    before = docker_client.images.get(scorer_image).id
    lines: list[str] = []
    assert ensure_scorer_image(log=lines.append, client=docker_client) == scorer_image
    assert docker_client.images.get(scorer_image).id == before
    assert [ln for ln in lines if "is up to date" in ln] == lines and len(lines) == 2


@pytest.mark.docker
async def test_scoring_runs_in_the_scorer_image_with_the_submission_read_only(
        scorer_image: str, docker_client: Any, tmp_path: Path) -> None:
    from runner.budget import RunClock
    from runner.docker_sandbox import DockerSandbox
    from runner.scoring import Scorer
    from tasks.api import load_spec_file

    bundle = tmp_path / "tiny_count"
    shutil.copytree(Path(__file__).parent / "fixtures" / "tasks" / "tiny_count", bundle)
    (bundle / "scorer" / "score.py").write_text(PROBE_SCORER)
    workspace = tmp_path / "workspace"
    (workspace / "model").mkdir(parents=True)
    emitted: list[tuple[str, dict[str, Any]]] = []

    async def emit(kind: str, data: dict[str, Any]) -> None:
        emitted.append((kind, data))

    scorer = Scorer("probe-1", load_spec_file(bundle / "task.toml"), "smoke", workspace,
                    scorer_image, lambda spec: DockerSandbox(spec, client=docker_client),
                    RunClock(), emit, asset_home=tmp_path / "home")
    out = await scorer.score(final=True, submission="/workspace/model", gpu_ids=())
    assert out["error"] is None, out
    assert out["details"] == {"role": "scorer", "lm_eval": _pins(SCORER_CPU)["lm-eval"],
                              "submission_writable": False, "interfaces": ["lo"]}
    assert emitted[-1][0] == "score" and emitted[-1][1]["value"] == 1.0


PROBE_SCORER = """
import argparse, json, os
from importlib.metadata import version
ap = argparse.ArgumentParser()
ap.add_argument("--workspace"); ap.add_argument("--scale"); ap.add_argument("--model")
a = ap.parse_args()
try:
    open(os.path.join(a.workspace, "model", "x"), "w").close()
    writable = True
except OSError:
    writable = False
details = {"role": os.environ.get("MLRB_IMAGE_ROLE"), "lm_eval": version("lm-eval"),
           "submission_writable": writable, "interfaces": sorted(os.listdir("/sys/class/net"))}
print(json.dumps({"metric": "lines_score", "value": 1.0, "metrics": {}, "details": details,
                  "error": None}))
"""


# -- mlrb_metrics, the helper inside the image ----------------------------------------------

def test_metrics_lines(mlrb_metrics: ModuleType, tmp_path: Path) -> None:
    assert mlrb_metrics.log(step=3, loss=0.4, lr=1e-3) is True
    assert mlrb_metrics.log({"acc": 0.5}, step=4) is True
    lines = (tmp_path / ".mlrb" / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"ts", "step", "values"} and first["step"] == 3
    assert first["values"] == {"loss": 0.4, "lr": 1e-3}
    assert [parse_metrics_line(line) for line in lines] == [
        {"step": 3, "values": {"loss": 0.4, "lr": 1e-3}},
        {"step": 4, "values": {"acc": 0.5}},
    ]


def test_metrics_never_raise(mlrb_metrics: ModuleType, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def __float__(self) -> float:
            raise RuntimeError("no")

    assert mlrb_metrics.log(step="x", loss=math.nan, obj=Broken(), flag=True, s="text") is False
    assert mlrb_metrics.log(step=math.inf, loss=1) is True
    line = (tmp_path / ".mlrb" / "metrics.jsonl").read_text().strip()
    assert json.loads(line)["step"] is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MLRB_METRICS_FILE", str(blocker / "sub" / "m.jsonl"))  # cannot exist
    assert mlrb_metrics.log(step=1, loss=1.0) is False


def test_metrics_accept_tensors(mlrb_metrics: ModuleType, tmp_path: Path) -> None:
    import torch

    assert mlrb_metrics.log(step=torch.tensor(5), loss=torch.tensor(0.25)) is True
    line = json.loads((tmp_path / ".mlrb" / "metrics.jsonl").read_text())
    assert line["step"] == 5 and line["values"] == {"loss": 0.25}


@pytest.mark.docker
def test_the_command_line_names_a_missing_base(docker_client: Any) -> None:
    import subprocess
    import sys

    for flags in ([], ["--gpu"], ["--scorer", "--gpu"]):
        proc = subprocess.run([sys.executable, "-m", "mlrb_tui.cli", "image", "build", *flags,
                               "--base", "mlrb-base:nope"], capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        assert proc.returncode == 1, proc.stderr
        assert "the base image mlrb-base:nope is missing: pull or build it" in proc.stderr
