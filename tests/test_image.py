"""The sandbox image: what is in it, when it is reused, and the in-sandbox metrics helper."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from runner import image
from runner.image import (
    DEFAULT_BASE,
    DEFAULT_IMAGE,
    FINGERPRINT_LABEL,
    ImageError,
    build_image,
    fingerprint,
)
from runner.metrics import parse_metrics_line


@pytest.fixture(scope="session")
def sandbox_image(docker_client: Any) -> str:
    return build_image(log=lambda line: None, client=docker_client)


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
               "print(torch.__version__, torch.cuda.is_available(), mlrb_metrics.metrics_file())'")
    lines = out.split()
    assert lines[:6] == ["agent", "1000", "1000", "1000", "/home/agent", "/usr/bin/timeout"]
    assert lines[7] == "2.13.0+cpu"
    assert lines[9] == "/workspace/.mlrb/metrics.jsonl"
    attrs = docker_client.images.get(sandbox_image).attrs
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["PYTHONUNBUFFERED"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert env["TRANSFORMERS_OFFLINE"] == "1"
    assert attrs["Config"]["User"] == "agent"
    base_id = docker_client.images.get(DEFAULT_BASE).id
    assert attrs["Config"]["Labels"][FINGERPRINT_LABEL] == fingerprint(base_id)


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
