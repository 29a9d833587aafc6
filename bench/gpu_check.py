"""GPU check: the runner's GPU path on a real GPU host, with figures printed.

On a bare GPU host (the NVIDIA driver; Docker with the NVIDIA runtime and the GPU sandbox image
when present, else the local sandbox):

1. a 3-minute GPU training run through the runner (a scripted agent, a RunSupervisor, one GPU);
2. NVML attributes GPU memory to the run's processes (the sampler's `proc_mem` for the run);
3. freezing the run drops the GPU's utilisation to 0 within 5 s, and resuming brings it back;
4. a tiny model scored with lm-eval on the GPU (a local multiple-choice task: nothing fetched).

Exit 0 when every check passes, 1 when one fails, 2 on a host without a GPU.

Everything beyond PyTorch and nvidia-ml-py travels as wheels, so it runs where nothing can be
fetched: `--prepare DIR` (on a machine with the registry) collects the project's wheel, its
dependencies and lm-eval's into DIR with a `run.sh` that installs them offline and runs this.

    python bench/gpu_check.py                      # on the GPU host
    python bench/gpu_check.py --prepare /tmp/carry # where the registry is reachable
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NO_GPU_EXIT = 2
FREEZE_LIMIT_S = 5.0
GPU_IMAGE = "mlrb-sandbox-gpu:latest"
# what the check needs beyond the project itself; PyTorch and nvidia-ml-py are on the host
EXTRA_REQUIREMENTS = ("lm-eval", "transformers", "accelerate", "datasets", "safetensors")
HOST_PROVIDED = ("torch", "nvidia-", "triton", "nvidia_ml_py", "pynvml")

TRAIN = '''"""A steady GPU load for SECONDS: a small MLP fitted to random targets on cuda."""
import json, os, sys, time
import torch

seconds = float(sys.argv[1])
dev = torch.device("cuda")
model = torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 4096)).to(dev)
opt = torch.optim.SGD(model.parameters(), lr=1e-4)
x = torch.randn(2048, 4096, device=dev)
y = torch.randn(2048, 4096, device=dev)
metrics = os.environ.get("MLRB_METRICS_FILE", ".mlrb/metrics.jsonl")
os.makedirs(os.path.dirname(metrics) or ".", exist_ok=True)
start, step, last = time.monotonic(), 0, 0.0
while time.monotonic() - start < seconds:
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    step += 1
    if time.monotonic() - last >= 1.0:
        torch.cuda.synchronize()
        last = time.monotonic()
        with open(metrics, "a") as f:
            f.write(json.dumps({"step": step, "loss": float(loss)}) + "\\n")
        print(f"step {step} loss {float(loss):.4f}", flush=True)
os.makedirs("model", exist_ok=True)
torch.save(model.state_dict(), "model/weights.pt")
print(f"done: {step} steps", flush=True)
'''

TASK_TOML = """name = "gpu_check"
title = "GPU check"
source = "bench/gpu_check.py"
metric = "steps"
deliverable = "model/weights.pt"

[smoke]
time_s = 600

[full]
time_s = 1200
gpus = 1
cpus = 4
memory_gb = 16
score_timeout_s = 120
"""

SCORER = """import json, sys
print(json.dumps({"metric": "steps", "value": 1.0, "metrics": {"steps": 1.0}, "details": {}, "error": None}))
"""


# -- the host --------------------------------------------------------------------------------
def gpu_present() -> tuple[bool, str]:
    """Whether NVML sees a GPU, and what it is (or why not)."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return False, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
        if n == 0:
            return False, "NVML sees no GPU"
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        driver = pynvml.nvmlSystemGetDriverVersion()
        return True, f"{n} GPU(s), GPU 0 {name if isinstance(name, str) else name.decode()}, driver {driver}"
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return False, f"NVML: {exc}"


def choose_backend(wanted: str, image: str) -> tuple[str, str]:
    """("docker" | "local", why): Docker when it has the NVIDIA runtime and the GPU image."""
    if wanted != "auto":
        return wanted, "asked for"
    try:
        import docker

        client = docker.from_env()
        runtimes = client.info().get("Runtimes", {})
        if "nvidia" not in runtimes:
            return "local", "Docker has no nvidia runtime"
        client.images.get(image)
        return "docker", f"Docker with the nvidia runtime and {image}"
    except Exception as exc:  # noqa: BLE001 - no engine, no image: the local sandbox serves
        return "local", f"no usable Docker GPU path ({type(exc).__name__})"


def util_now(index: int = 0) -> float:
    import pynvml

    return float(pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(index)).gpu)


# -- the run through the runner ---------------------------------------------------------------
async def training_run(seconds: float, backend: str, image: str, work: Path) -> dict[str, Any]:
    from runner.agents.base import ScriptedAgent
    from runner.control import ControlCommand
    from runner.gpu import GpuSampler
    from runner.journal import Journal, JournalReader
    from runner.sandbox_factory import create_sandbox
    from runner.supervisor import RunRequest, RunSupervisor
    from tasks.api import load_spec_file

    task_dir = work / "tasks" / "gpu_check"
    (task_dir / "scorer").mkdir(parents=True)
    (task_dir / "task.toml").write_text(TASK_TOML)
    (task_dir / "prompt.md").write_text("Train on the GPU.\n")
    (task_dir / "scorer" / "score.py").write_text(SCORER)
    plan = [{"name": "write_file", "args": {"path": "train.py", "content": TRAIN}},
            {"name": "bash", "args": {"command": f"python3 train.py {seconds:g}", "timeout_s": seconds + 300}},
            {"name": "submit", "args": {"path": "model", "summary": "GPU load"}}]
    sampler = GpuSampler(interval_s=0.5)
    await sampler.start()
    journal = Journal(work / "journal.db")
    run = "gpu-check"
    sup = RunSupervisor(
        RunRequest(run=run, task=load_spec_file(task_dir / "task.toml"), scale="full", agent_kind="scripted"),
        journal=journal, publish=None, make_sandbox=lambda spec: create_sandbox(spec, backend=backend),
        agent=ScriptedAgent(plan), workspace=work / run / "workspace", runner_id="gpu-check",
        image=image, gpu_sampler=sampler, asset_home=work / "home")
    sup.gpu_ids = (0,)
    figures: dict[str, Any] = {"backend": backend, "run_seconds": seconds}

    def gpu_events() -> list[dict[str, Any]]:
        r = JournalReader(work / "journal.db")
        try:
            return [e.data for e in r.events(run, 0, 1_000_000) if e.kind == "gpu"]
        finally:
            r.close()

    async def until(pred: Any, timeout: float, step: float = 0.1) -> float | None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if pred():
                return time.monotonic() - t0
            await asyncio.sleep(step)
        return None

    def cmd(action: str) -> ControlCommand:
        return ControlCommand(run=run, action=action, operator="gpu-check@host", reason="gpu_check", args={})

    started = time.monotonic()
    task = asyncio.create_task(sup.run())
    try:
        busy = await until(lambda: util_now() > 20, 180)
        figures["seconds_to_busy_gpu"] = busy
        await until(lambda: any(s.get("proc_mem", 0) > 0 for s in gpu_events()), 30)
        samples = gpu_events()
        figures["proc_mem_mib"] = max((s.get("proc_mem", 0) for s in samples), default=0) / 2**20
        figures["device_mem_used_mib"] = max((s.get("mem_used") or 0 for s in samples), default=0) / 2**20
        figures["util_before_freeze"] = util_now()
        await sup.control(cmd("freeze"))
        t_freeze = time.monotonic()
        zero = await until(lambda: util_now() == 0, 15, step=0.05)
        figures["seconds_to_zero_util_after_freeze"] = zero
        frozen_for = await until(lambda: time.monotonic() - t_freeze >= 3.0 and util_now() > 0, 3.5)
        figures["util_stayed_zero_while_frozen"] = frozen_for is None
        await sup.control(cmd("resume"))
        back = await until(lambda: util_now() > 20, 30, step=0.05)
        figures["seconds_to_busy_after_resume"] = back
        status = await asyncio.wait_for(task, seconds + 600)
        figures["run_status"] = status
        figures["run_wall_seconds"] = round(time.monotonic() - started, 1)
        figures["gpu_samples"] = len(gpu_events())
    finally:
        if not task.done():
            await sup.control(cmd("kill"))
            await asyncio.wait_for(task, 60)
        await sampler.stop()
        journal.close()
    return figures


# -- lm-eval on the GPU -----------------------------------------------------------------------
def lm_eval_on_gpu(work: Path) -> dict[str, Any]:
    """A tiny random Llama and a local 40-item multiple-choice task, through lm-eval on cuda."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tasks import base_models, toy_corpus

    tok = base_models.tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=128,
                                         max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    base_models.save(model, tok, work / "tiny")
    tasks = work / "lm_eval_tasks"
    tasks.mkdir()
    items = toy_corpus.choice_items(40, 7)
    (tasks / "toy.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    (tasks / "toy_choice.yaml").write_text(
        "task: toy_choice\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks / 'toy.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n")
    import lm_eval
    from lm_eval.tasks import TaskManager

    t0 = time.monotonic()
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={work / 'tiny'},dtype=float16",
                                  tasks=["toy_choice"], device="cuda:0", batch_size=8,
                                  task_manager=TaskManager(include_path=str(tasks)))
    acc = float(out["results"]["toy_choice"]["acc,none"])
    return {"lm_eval_version": getattr(lm_eval, "__version__", "?"), "lm_eval_acc": acc,
            "lm_eval_items": len(items), "lm_eval_seconds": round(time.monotonic() - t0, 1)}


# -- preparing what travels --------------------------------------------------------------------
def prepare(dest: Path, wheelhouse: Path | None, offline: bool) -> int:
    """Collect the project's wheel and every wheel the check needs but PyTorch and nvidia-ml-py
    into DEST, with run.sh; returns the exit code."""
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
                           capture_output=True, text=True)
    if built.returncode != 0:
        print(f"the project's wheel could not be built:\n{built.stderr[-2000:]}", file=sys.stderr)
        return 1
    source = ["--no-index"] if offline else []
    if wheelhouse is not None:
        source += ["--find-links", str(wheelhouse)]
    report = dest / "resolved.json"
    project = next(wheels.glob("mlrb*.whl"), None) or next(wheels.glob("*.whl"))
    resolved = subprocess.run([*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                               *source, str(project), *EXTRA_REQUIREMENTS], capture_output=True, text=True)
    if resolved.returncode != 0:
        print(f"the requirements could not be resolved{' offline' if offline else ''}:\n"
              f"{resolved.stderr.strip()[-2000:]}", file=sys.stderr)
        return 1
    pins = [f"{i['metadata']['name']}=={i['metadata']['version']}"
            for i in json.loads(report.read_text())["install"]]
    wanted = [p for p in pins if not p.lower().startswith(HOST_PROVIDED)
              and not p.lower().startswith(("mlrb", project.name.split("-")[0].lower()))]
    got = subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels), *source, *wanted],
                         capture_output=True, text=True)
    if got.returncode != 0:
        print(f"the wheels could not be downloaded:\n{got.stderr.strip()[-2000:]}", file=sys.stderr)
        return 1
    shutil.copy2(Path(__file__), dest / "gpu_check.py")
    (dest / "requirements.txt").write_text("\n".join(wanted) + "\n")
    (dest / "run.sh").write_text(
        "#!/bin/sh\n# on the GPU host: PyTorch (CUDA) and nvidia-ml-py installed, nothing fetched\n"
        "set -e\ncd \"$(dirname \"$0\")\"\n"
        "python3 -m pip install --no-index --find-links wheels wheels/*.whl -r requirements.txt\n"
        "exec python3 gpu_check.py \"$@\"\n")
    (dest / "run.sh").chmod(0o755)
    size = sum(f.stat().st_size for f in wheels.iterdir())
    print(f"prepared {dest}: {len(list(wheels.iterdir()))} wheels, {size / 1e6:.1f} MB; "
          f"carry it to the GPU host and run {dest / 'run.sh'}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180.0, help="length of the training run")
    ap.add_argument("--backend", choices=["auto", "docker", "local"], default="auto")
    ap.add_argument("--image", default=GPU_IMAGE, help="the GPU sandbox image (docker backend)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    ap.add_argument("--skip-lm-eval", action="store_true")
    ap.add_argument("--prepare", type=Path, metavar="DIR", default=None,
                    help="collect the wheels and the project into DIR to carry to a GPU host")
    ap.add_argument("--wheelhouse", type=Path, default=None, help="with --prepare: wheels to use first")
    ap.add_argument("--offline", action="store_true", help="with --prepare: only --wheelhouse, no registry")
    args = ap.parse_args(argv)
    if args.seconds <= 0:
        ap.error("--seconds must be positive")
    if (args.wheelhouse or args.offline) and args.prepare is None:
        ap.error("--wheelhouse and --offline go with --prepare")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare is not None:
        return prepare(args.prepare, args.wheelhouse, args.offline)
    ok, what = gpu_present()
    if not ok:
        print(f"no GPU on this host: {what}; gpu_check needs an NVIDIA GPU and its driver")
        return NO_GPU_EXIT
    print(f"host: {what}")
    backend, why = choose_backend(args.backend, args.image)
    print(f"sandbox: {backend} ({why})")
    image = args.image if backend == "docker" else "mlrb-sandbox:latest"
    with tempfile.TemporaryDirectory(prefix="mlrb-gpu-check-") as d:
        figures = asyncio.run(training_run(args.seconds, backend, image, Path(d)))
        if not args.skip_lm_eval:
            try:
                figures.update(lm_eval_on_gpu(Path(d)))
            except ImportError as exc:
                figures["lm_eval_error"] = f"lm-eval is not installed ({exc}); use --prepare's wheels"
    checks = {
        "run succeeded": figures.get("run_status") == "succeeded",
        "NVML attributes GPU memory to the run": figures.get("proc_mem_mib", 0) > 0,
        f"freeze drops utilisation to 0 within {FREEZE_LIMIT_S:g} s":
            (figures.get("seconds_to_zero_util_after_freeze") or 99) <= FREEZE_LIMIT_S
            and bool(figures.get("util_stayed_zero_while_frozen")),
        "resume restores utilisation": figures.get("seconds_to_busy_after_resume") is not None,
    }
    if not args.skip_lm_eval:
        checks["lm-eval scores on the GPU"] = "lm_eval_acc" in figures
    for k, v in figures.items():
        print(f"  {k:<36} {v:.2f}" if isinstance(v, float) else f"  {k:<36} {v}")
    for name, passed in checks.items():
        print(f"{'ok  ' if passed else 'FAIL'} {name}")
    if args.json is not None:
        args.json.write_text(json.dumps({"figures": figures, "checks": checks}, indent=1))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
