"""bench/gpu_check.py's parts that need no GPU: the host without one, its arguments, and
--prepare's collecting of the project's wheel (offline: it says what it could not resolve)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "bench" / "gpu_check.py"


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_host_without_a_gpu_is_told_so_and_exits_2() -> None:
    sys.path.insert(0, str(CHECK.parent))
    import gpu_check

    has_gpu, what = gpu_check.gpu_present()
    if has_gpu:
        pytest.skip(f"this host has a GPU ({what}): the full check runs here instead")
    out = _run()
    assert out.returncode == 2
    assert out.stdout.startswith("no GPU on this host: ") and "gpu_check needs an NVIDIA GPU and its driver" in out.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--seconds", "0"], "--seconds must be positive"),
    (["--offline"], "--wheelhouse and --offline go with --prepare"),
    (["--backend", "podman"], "invalid choice: 'podman'"),
])
def test_bad_arguments_are_refused_with_the_reason(args: list[str], message: str) -> None:
    out = _run(*args)
    assert out.returncode == 2 and message in out.stderr


def test_prepare_builds_the_project_wheel_and_names_what_it_cannot_resolve_offline(tmp_path: Path) -> None:
    empty = tmp_path / "wheelhouse"
    empty.mkdir()
    out = _run("--prepare", str(tmp_path / "carry"), "--offline", "--wheelhouse", str(empty))
    assert out.returncode == 1
    assert "the requirements could not be resolved offline" in out.stderr
    wheels = [p.name for p in (tmp_path / "carry" / "wheels").iterdir()]
    assert len(wheels) == 1 and wheels[0].startswith("mlrb_console-") and wheels[0].endswith(".whl")
    assert not (tmp_path / "carry" / "run.sh").exists()  # nothing to run until every wheel is there
