"""`mlrb doctor`: each check against the real thing where this host has it (the Docker engine,
Mosquitto, the disk, the staged assets from a stand-in hub), run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runner import doctor as doctor_mod
from runner.doctor import Check, check_gpus, diagnose
from tests.hub_server import StandInHub
from tests.test_assets import items_of, standard_task, store, tiny_repos


def env_for(tmp_path: Path, config: str = "", **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    if config:
        (home / "config.toml").write_text(config)
    env = {**os.environ, "MLRB_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}
    for var in ("MLRB_CONFIG", "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "HF_TOKEN", "MLRB_MOSQUITTO",
                "MLRB_SANDBOX", "MLRB_TASKS_PATH"):
        if var not in extra:
            env.pop(var, None)
    return env


def doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, Check], str]:
    proc = subprocess.run([sys.executable, "-m", "mlrb_tui.cli", "doctor", "--json", *args], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr, proc.stderr
    out = json.loads(proc.stdout)
    checks = {c["name"]: Check(**c) for c in out["checks"]}
    assert out["ok"] is (proc.returncode == 0)
    return proc.returncode, checks, proc.stdout


LOCAL = '[sandbox]\nbackend = "local"\n'


def test_smoke_scale_on_a_cpu_host_with_mosquitto_passes(tmp_path):
    rc, checks, _ = doctor(env_for(tmp_path, LOCAL), "--scale", "smoke")
    assert rc == 0, checks
    assert checks["config"].status == "ok" and "config.toml: valid" in checks["config"].detail
    assert checks["broker"].status == "ok" and "mosquitto" in checks["broker"].detail
    assert checks["assets smoke"].status == "ok"
    assert checks["docker"].status == "warn" and "local" in checks["docker"].detail
    # GPUs are not needed at smoke scale: their absence is a warning with the fix
    assert checks["gpus"].status in ("ok", "warn") and checks["gpus"].fix
    # the full-scale assets are missing here, which smoke scale does not need
    assert checks["assets mini_pile/full"].status == "warn"


def test_full_scale_without_gpus_or_assets_fails_with_a_fix_on_each_line(tmp_path):
    rc, checks, _ = doctor(env_for(tmp_path))
    assert rc == 1
    gpus = checks["gpus"]
    if gpus.status != "ok":  # a host without a GPU: say so, and how to get one seen
        assert gpus.status == "fail" and gpus.detail.startswith("no GPU") and "driver" in gpus.fix
    for name in ("baby_lm", "llm_merging", "mini_pile"):
        c = checks[f"assets {name}/full"]
        assert c.status == "fail" and f"mlrb assets fetch {name} --scale full" in c.fix
    assert "HF_TOKEN" in checks["assets llm_merging/full"].fix  # its Llama base is gated
    assert checks["disk"].status in ("ok", "fail") and "full scale needs" in checks["disk"].detail


@pytest.mark.docker
def test_docker_and_the_gpu_runtime_are_read_from_the_engine(tmp_path, docker_client):
    rc, checks, _ = doctor(env_for(tmp_path, '[sandbox]\nimage = "mlrb-no-such-image:1"\n'))
    assert rc == 1
    assert checks["docker"].status == "ok" and "Docker Engine" in checks["docker"].detail
    image = checks["image mlrb-no-such-image:1"]
    assert image.status == "fail" and image.detail == "missing" and "mlrb image build" in image.fix
    # the scorer image and the GPU builds are checked too; a missing GPU build only warns
    assert checks["image mlrb-scorer:latest"].status in ("ok", "warn", "fail")
    for tag, command in (("mlrb-sandbox-gpu:latest", "mlrb image build --gpu"),
                         ("mlrb-scorer-gpu:latest", "mlrb image build --scorer --gpu")):
        gpu_image = checks[f"image {tag}"]
        assert gpu_image.status in ("ok", "warn"), gpu_image
        if gpu_image.detail == "missing":
            assert gpu_image.status == "warn" and f"`{command}`" in gpu_image.fix
    runtimes = docker_client.info().get("Runtimes") or {}
    runtime = checks["gpu runtime"]
    if "nvidia" in runtimes:
        assert runtime.status == "ok"
    else:
        assert runtime.status == "fail" and runtime.detail.startswith("no GPU runtime")
        assert "NVIDIA Container Toolkit" in runtime.fix


def test_no_docker_engine_fails_full_scale_and_warns_at_smoke(tmp_path):
    env = env_for(tmp_path, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
    rc, checks, _ = doctor(env)
    assert rc == 1
    assert checks["docker"].status == "fail" and "no Docker engine answers" in checks["docker"].detail
    assert "start it" in checks["docker"].fix
    _rc, checks, _ = doctor(env, "--scale", "smoke")
    assert checks["docker"].status == "warn"  # the local sandbox stands in at smoke scale
    assert checks["gpu runtime"].status == "warn" and "not checked" in checks["gpu runtime"].detail


def test_a_broken_config_and_a_missing_mosquitto_are_failures_and_the_rest_still_runs(tmp_path):
    env = env_for(tmp_path, "[sandbox]\nbackend = \"local\"\nimagee = 3\n",
                  MLRB_MOSQUITTO=str(tmp_path / "no-mosquitto"))
    rc, checks, _ = doctor(env, "--scale", "smoke")
    assert rc == 1
    assert checks["config"].status == "fail" and "unknown key 'sandbox.imagee'" in checks["config"].detail
    assert checks["broker"].status == "fail" and "apt-get install mosquitto" in checks["broker"].fix
    assert checks["assets smoke"].status == "ok"  # later checks ran with the defaults


def test_an_external_broker_is_reached_or_named_as_down(tmp_path, mosquitto):
    rc, checks, _ = doctor(env_for(tmp_path, LOCAL + f'[bus]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'),
                           "--scale", "smoke")
    assert rc == 0 and checks["broker"].detail == f"127.0.0.1:{mosquitto.port} answers"
    mosquitto.proc.terminate()
    mosquitto.proc.wait(timeout=10)
    rc, checks, _ = doctor(env_for(tmp_path, LOCAL + f'[bus]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'),
                           "--scale", "smoke")
    assert rc == 1 and checks["broker"].status == "fail" and "does not answer" in checks["broker"].detail


def test_provider_keys_are_reported_present_and_never_printed(tmp_path):
    secret, other, token = "sk-ant-doctor-secret-123", "sk-openai-doctor-secret-456", "hf_doctor_secret_789"
    env = env_for(tmp_path, LOCAL + f'[providers.openai]\napi_key = "{other}"\n',
                  ANTHROPIC_API_KEY=secret, HF_TOKEN=token)
    _rc, checks, stdout = doctor(env, "--scale", "smoke")
    assert checks["provider anthropic"].status == "ok" and "ANTHROPIC_API_KEY is set" in checks["provider anthropic"].detail
    assert checks["provider openai"].status == "ok" and "config file" in checks["provider openai"].detail
    plain = subprocess.run([sys.executable, "-m", "mlrb_tui.cli", "doctor"], env=env, capture_output=True,
                           text=True, timeout=120).stdout
    for s in (secret, other, token):
        assert s not in stdout and s not in plain
    _rc, checks, _ = doctor(env_for(tmp_path, LOCAL), "--scale", "smoke")
    missing = checks["provider anthropic"]
    assert missing.status == "warn" and "export ANTHROPIC_API_KEY" in missing.fix


def test_staged_assets_are_ok_with_their_locked_commits(tmp_path):
    hub = StandInHub().start()
    try:
        commits = tiny_repos(hub, os.urandom(1024))
        root = standard_task(tmp_path / "tasks", commits)
        env = env_for(tmp_path, LOCAL, MLRB_TASKS_PATH=str(root))
        _rc, checks, _ = doctor(env)
        assert checks["assets assets_task/full"].status == "fail"
        store(tmp_path / "home", hub).fetch(items_of(root))
    finally:
        hub.stop()
    _rc, checks, _ = doctor(env)
    staged = checks["assets assets_task/full"]
    assert staged.status == "ok" and staged.detail.startswith("3 present")
    assert f"tiny-model@{commits['model'][:8]}" in staged.detail
    assert checks["assets mini_pile/full"].status == "fail"  # the shipped tasks are still missing


def test_too_little_disk_for_the_missing_assets_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("MLRB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLRB_CONFIG", raising=False)
    monkeypatch.setattr(doctor_mod, "free_bytes", lambda _p: 10 * 1000**3)
    report = diagnose("full", docker_client=lambda: (None, "not asked"))
    disk = next(c for c in report.checks if c.name == "disk")
    assert disk.status == "fail" and disk.detail.startswith("10.0 GB free") and "MLRB_HOME" in disk.fix
    assert not report.ok


class FakeNvml:
    """NVML's calls as pynvml names them: the GPU itself cannot be had on a CPU host."""

    def __init__(self, count: int, cuda: int) -> None:
        self.count, self.cuda, self.shut = count, cuda, False

    def nvmlInit(self) -> None: ...  # noqa: N802 - NVML's names
    def nvmlShutdown(self) -> None: self.shut = True  # noqa: N802, E704
    def nvmlDeviceGetCount(self) -> int: return self.count  # noqa: N802, E704
    def nvmlDeviceGetHandleByIndex(self, i: int) -> int: return i  # noqa: N802, E704
    def nvmlDeviceGetName(self, _h: Any) -> bytes: return b"NVIDIA H100 80GB HBM3"  # noqa: N802, E704
    def nvmlSystemGetDriverVersion(self) -> str: return "550.54.15"  # noqa: N802, E704
    def nvmlSystemGetCudaDriverVersion(self) -> int: return self.cuda  # noqa: N802, E704


def test_gpus_and_the_drivers_cuda_through_nvml():
    from runner.doctor import min_cuda

    # the floor is the CUDA runtime the GPU lock's torch bundles (CUDA 13 for torch 2.13.0)
    assert min_cuda() == (13, 0)
    nvml = FakeNvml(2, 13020)
    ok = check_gpus("full", 1, nvml)
    assert ok.status == "ok" and ok.detail == "2 GPU (NVIDIA H100 80GB HBM3); driver 550.54.15, CUDA 13.2"
    assert nvml.shut
    old = check_gpus("full", 1, FakeNvml(1, 11080))
    assert old.status == "fail" and "CUDA 11.8" in old.detail and "upgrade the NVIDIA driver" in old.fix
    cuda12 = check_gpus("full", 1, FakeNvml(1, 12040))
    assert cuda12.status == "fail" and "older than the CUDA 13.0" in cuda12.detail
    assert check_gpus("full", 1, FakeNvml(0, 12040)).status == "fail"
    assert check_gpus("smoke", 0, FakeNvml(0, 12040)).status == "warn"


@pytest.mark.docker
def test_a_missing_gpu_image_warns_where_a_gpu_is_needed_and_is_fine_where_not(
        tmp_path, docker_client, monkeypatch):
    from runner.config import Config

    monkeypatch.setenv("MLRB_GPU_IMAGE", "mlrb-no-such-gpu:1")
    monkeypatch.setenv("MLRB_GPU_SCORER_IMAGE", "mlrb-no-such-gpu-scorer:1")
    cfg = Config(home=tmp_path, image="mlrb-no-such-image:1", scorer_image="mlrb-no-such-scorer:1")
    full = {c.name: c for c in doctor_mod.check_images(cfg, 1, docker_client)}
    assert list(full) == ["image mlrb-no-such-image:1", "image mlrb-no-such-scorer:1",
                          "image mlrb-no-such-gpu:1", "image mlrb-no-such-gpu-scorer:1"]
    assert full["image mlrb-no-such-scorer:1"].status == "fail"
    assert "`mlrb image build --scorer --tag mlrb-no-such-scorer:1`" in full["image mlrb-no-such-scorer:1"].fix
    gpu = full["image mlrb-no-such-gpu:1"]
    assert (gpu.status, gpu.detail) == ("warn", "missing") and "mlrb image build --gpu" in gpu.fix
    smoke = {c.name: c for c in doctor_mod.check_images(cfg, 0, docker_client)}
    assert smoke["image mlrb-no-such-gpu:1"].status == "ok"
    assert "not needed at this scale" in smoke["image mlrb-no-such-gpu:1"].detail


async def test_submit_at_full_scale_refuses_at_once_what_would_fail_at_sandbox_start(
        tmp_path: Path, docker_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.config import Config
    from runner.engine import Engine, Job, SubmitError
    from runner.image import build_image

    monkeypatch.setenv("MLRB_TASKS_PATH", str(Path(__file__).parent / "fixtures" / "tasks"))
    cpu_image = build_image(log=lambda line: None, client=docker_client)  # reused when current
    runtimes = docker_client.info().get("Runtimes") or {}
    for image, want in (("mlrb-no-such-image:1", "image mlrb-no-such-image:1: missing"),
                        (cpu_image, f"image {cpu_image}: the CPU build, and tiny_train at full scale "
                                    "needs 1 GPU")):
        engine = Engine(Config(home=tmp_path / image.replace(":", "_"), backend="docker", image=image,
                               max_runs=1), use_bus=False)
        await engine.start()
        try:
            engine.gpus.set_devices([0])  # as if this host had the GPU: the rest is what is missing
            with pytest.raises(SubmitError) as refused:
                await engine.submit(Job(task="tiny_train", scale="full"))
            why = str(refused.value)
            assert want in why
            if "missing" in want:
                assert "mlrb image build" in why
            if "nvidia" not in runtimes:
                assert "no GPU runtime" in why and "NVIDIA Container Toolkit" in why
            assert not engine.supervisors  # nothing started, nothing to fail later
            if image == cpu_image:  # the smoke scale needs no GPU: the CPU build runs it
                run = await engine.submit(Job(task="tiny_train"))
                assert (await engine.wait([run]))[run] == "succeeded"
        finally:
            await engine.stop()
