"""Preflight: what this host has and lacks to run MLRB at a scale, one check a line.

Each check is `ok`, `warn` (works, with less: e.g. no provider key, so only the scripted
baseline runs) or `fail` (a run at that scale cannot work here), and every non-ok line says how
to fix it. Nothing here prints a secret: a provider key or hub token is reported as set or not.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from runner.assets import (
    MARGIN_BYTES,
    MARGIN_FRACTION,
    AssetError,
    AssetStore,
    TaskAsset,
    free_bytes,
    human,
)
from runner.config import Config, ConfigError, load_config, mlrb_home
from tasks.api import SCALES, TaskSpec, TaskSpecError, list_tasks

Status = Literal["ok", "warn", "fail"]
PROVIDER_KEYS = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
FALLBACK_CUDA = (12, 0)  # where the GPU lock names no CUDA runtime: PyPI's oldest torch CUDA line


def min_cuda() -> tuple[int, int]:
    """The CUDA version the GPU image's torch wheels bundle (from its lock): an older driver
    cannot run them."""
    from runner.image import cuda_version

    try:
        return cuda_version() or FALLBACK_CUDA
    except (OSError, ValueError):
        return FALLBACK_CUDA
WORKSPACE_BYTES = 20 * 1000**3  # beyond the assets: checkpoints and data a full-scale run writes
PING_TIMEOUT_S = 3


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f"  -> {self.fix}" if self.fix and self.status != "ok" else ""
        return f"{self.status:<4}  {self.name:<34} {self.detail}{fix}"


@dataclass
class Report:
    scale: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def summary(self) -> str:
        n = {s: sum(c.status == s for c in self.checks) for s in ("ok", "warn", "fail")}
        verdict = (f"this host can run {self.scale} scale" if self.ok
                   else f"this host cannot run {self.scale} scale")
        return f"{n['ok']} ok, {n['warn']} warn, {n['fail']} fail: {verdict}"

    def to_json(self) -> dict[str, Any]:
        return {"scale": self.scale, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def _needs(scale: str, specs: list[TaskSpec]) -> int:
    """The most GPUs one task asks for at this scale."""
    return max((s.scale(scale).gpus for s in specs), default=0)


# ----- the checks

def check_config() -> tuple[Config, Check]:
    """The config file parses and every key is known; with a bad one, the defaults stand in."""
    home = mlrb_home()
    path = Path(os.environ.get("MLRB_CONFIG", home / "config.toml"))
    try:
        cfg = load_config(home)
    except ConfigError as exc:
        return Config(home=home), Check("config", "fail", str(exc), f"correct {path}")
    where = f"{path}: valid" if path.is_file() else f"no {path}: the defaults"
    return cfg, Check("config", "ok", f"{where}; home {cfg.home}")


def _docker_client() -> tuple[Any, str]:
    try:
        import docker

        client = docker.from_env(timeout=PING_TIMEOUT_S)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine here"
        return None, (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return client, ""


def check_docker(cfg: Config, scale: str, client: Any, why: str) -> Check:
    if cfg.backend == "local":
        return Check("docker", "warn", "not used: the sandbox backend is local (no isolation)",
                     "set [sandbox] backend = \"auto\" in the config to run agents in containers")
    if client is None:
        # at smoke scale the local sandbox stands in (unisolated); full scale needs containers
        return Check("docker", "fail" if scale == "full" or cfg.backend == "docker" else "warn",
                     f"no Docker engine answers ({why})",
                     "install Docker Engine and start it (systemctl start docker), or check DOCKER_HOST")
    version = client.version().get("Version", "?")
    return Check("docker", "ok", f"Docker Engine {version} answers")


def check_image(cfg: Config, client: Any, tag: str | None = None, kind: Any = None,
                if_missing: Status = "fail") -> Check:
    """One image: present, and built from the Dockerfile, lock and base the repository holds
    now. An image the config does not name (a GPU build) is at most a warning when missing."""
    from runner.image import KIND_LABEL, KINDS, SANDBOX_CPU, SANDBOX_GPU, image_state

    tag = tag or cfg.image
    name = f"image {tag}"
    if cfg.backend == "local":
        return Check(name, "ok", "not needed: the sandbox backend is local")
    if client is None:
        return Check(name, "warn", "not checked: no Docker engine", "start Docker, then `mlrb doctor` again")
    if kind is None:
        kind = SANDBOX_GPU if tag == SANDBOX_GPU.default_tag() else SANDBOX_CPU
    state, image = image_state(kind, tag, client)
    if image is not None:  # an image says which it is; a renamed one is still checked right
        labelled = ((image.attrs.get("Config") or {}).get("Labels") or {}).get(KIND_LABEL)
        kind = next((k for k in KINDS if k.key == labelled), kind)
        state, image = image_state(kind, tag, client)
    build = kind.build_command() + ("" if tag == kind.default_tag() else f" --tag {tag}")
    if state == "missing":
        first = "run `mlrb image base` (once), then " if kind.role == "sandbox" else "run "
        if if_missing == "ok":
            return Check(name, "ok", f"not built; not needed at this scale ({kind.flavour} "
                         f"{kind.role} image)", f"{first}`{build}`")
        return Check(name, if_missing, "missing", f"{first}`{build}`")
    size = human(int(image.attrs.get("Size") or 0))
    what = f"{kind.flavour} {kind.role} image"
    if state == "unknown":
        start = "its base" if kind.role == "sandbox" else f"its sandbox image {kind.sandbox.default_tag()}"
        return Check(name, "warn", f"present ({what}, {size}), but {start} is gone, so it cannot be "
                     "checked or rebuilt", "run `mlrb image base`, then `"
                     + (kind.build_command() if kind.role == "sandbox" else build) + "`")
    if state == "stale":
        return Check(name, "warn", f"present ({what}, {size}) but out of date: its Dockerfile, lock "
                     "or base changed", f"run `{build}`")
    have = ((image.attrs.get("Config") or {}).get("Labels") or {}).get("mlrb.fingerprint", "")
    return Check(name, "ok", f"present and current ({what}, {size}, fingerprint {have[:12]})")


def _configured_images(cfg: Config) -> dict[str, Any]:
    """The sandbox and scorer images the config names, each with the kind it is built as."""
    from runner.image import SANDBOX_CPU, SANDBOX_GPU, SCORER_CPU, SCORER_GPU

    return {cfg.image: SANDBOX_GPU if cfg.image == SANDBOX_GPU.default_tag() else SANDBOX_CPU,
            cfg.scorer_image: SCORER_GPU if cfg.scorer_image == SCORER_GPU.default_tag() else SCORER_CPU}


def check_images(cfg: Config, gpus_needed: int, client: Any) -> list[Check]:
    """The sandbox and scorer images the config names, and the GPU builds of both."""
    from runner.image import SANDBOX_GPU, SCORER_GPU

    configured = _configured_images(cfg)
    checks = [check_image(cfg, client, tag, kind) for tag, kind in configured.items()]
    for kind in (SANDBOX_GPU, SCORER_GPU):
        if kind.default_tag() not in configured:
            # a GPU host runs full scale in these: set [sandbox] image and scorer_image to them
            checks.append(check_image(cfg, client, kind.default_tag(), kind,
                                      if_missing="warn" if gpus_needed else "ok"))
    return checks


def check_proxy_image(cfg: Config, scale: str, specs: list[TaskSpec], client: Any) -> Check | None:
    """The egress proxy image, where a task at this scale has `network = "allowlist"`."""
    from runner import egress_proxy
    from runner.image import FINGERPRINT_LABEL, default_base

    users = [t.name for t in specs if scale in t.scales and t.scale(scale).network == "allowlist"]
    if not users:
        return None
    name, who = f"image {egress_proxy.proxy_image()}", ", ".join(users)
    if cfg.backend == "local":
        return Check(name, "warn", f"the local sandbox refuses allowlist tasks ({who})",
                     "use the docker sandbox backend for them")
    if client is None:
        return Check(name, "warn", "not checked: no Docker engine", "start Docker, then `mlrb doctor` again")
    import docker.errors

    try:
        image = client.images.get(egress_proxy.proxy_image())
    except docker.errors.ImageNotFound:
        return Check(name, "fail", f"missing: the egress proxy of allowlist tasks ({who})",
                     "run `mlrb image proxy`")
    have = ((image.attrs.get("Config") or {}).get("Labels") or {}).get(FINGERPRINT_LABEL)
    try:
        want = egress_proxy.fingerprint(client.images.get(default_base()).id)
    except docker.errors.ImageNotFound:
        want = None
    if have != want:
        return Check(name, "warn", "present but out of date: its Dockerfile or base changed",
                     "run `mlrb image proxy`")
    return Check(name, "ok", f"present and current (the egress proxy of {who})")


def check_gpu_runtime(cfg: Config, scale: str, gpus_needed: int, client: Any) -> Check:
    if cfg.backend == "local":
        return Check("gpu runtime", "ok", "not needed: the local sandbox's commands see the host's GPUs")
    if client is None:
        return Check("gpu runtime", "fail" if gpus_needed else "warn",
                     "not checked: no Docker engine", "start Docker, then `mlrb doctor` again")
    runtimes = sorted((client.info().get("Runtimes") or {}).keys())
    if "nvidia" in runtimes:
        return Check("gpu runtime", "ok", "the nvidia runtime is registered in Docker")
    status: Status = "fail" if gpus_needed else "warn"
    need = (f"{scale} scale needs {gpus_needed} GPU per run" if gpus_needed
            else f"{scale} scale needs none")
    return Check("gpu runtime", status,
                 f"no GPU runtime: Docker has {', '.join(runtimes) or 'no runtimes'} ({need})",
                 "install the NVIDIA Container Toolkit, then `nvidia-ctk runtime configure "
                 "--runtime=docker` and restart Docker")


def submit_problems(cfg: Config, task: TaskSpec, scale: str,
                    docker_client: Callable[[], tuple[Any, str]] | None = None) -> list[str]:
    """What a run of `task` at `scale` in Docker would fail on at sandbox start or scoring: the
    images it needs, the GPU runtime, the egress proxy. One line each, with the fix."""
    if cfg.backend == "local":
        return []
    from runner.image import KIND_LABEL, SANDBOX_CPU

    gpus = task.scale(scale).gpus
    client, why = (docker_client or _docker_client)()
    if client is None:
        return [f"no Docker engine answers ({why}): start Docker (systemctl start docker)"]
    try:
        checks = [check_image(cfg, client, tag, kind) for tag, kind in _configured_images(cfg).items()]
        if gpus:
            checks.append(check_gpu_runtime(cfg, scale, gpus, client))
        proxy = check_proxy_image(cfg, scale, [task], client)
        if proxy is not None:
            checks.append(proxy)
        problems = [f"{c.name}: {c.detail}" + (f" ({c.fix})" if c.fix else "")
                    for c in checks if c.status == "fail"]
        if gpus and not any(c.name == f"image {cfg.image}" and c.status == "fail" for c in checks):
            labels = ((client.images.get(cfg.image).attrs.get("Config") or {}).get("Labels") or {})
            if labels.get(KIND_LABEL) == SANDBOX_CPU.key:
                problems.append(f"image {cfg.image}: the CPU build, and {task.name} at {scale} scale "
                                f"needs {gpus} GPU (set [sandbox] image to the GPU build, "
                                "`mlrb image build --gpu`)")
    finally:
        client.close()
    return problems


def _nvml_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def check_gpus(scale: str, gpus_needed: int, nvml: Any = None) -> Check:
    """GPUs through NVML, and the driver's CUDA against what the torch wheels need."""
    status: Status = "fail" if gpus_needed else "warn"
    fix = "install the NVIDIA driver (nvidia-smi must list the GPUs)"
    try:
        if nvml is None:
            import pynvml

            nvml = pynvml
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - any NVML failure means "no GPU here"
        from runner.gpu import _no_gpu_reason

        return Check("gpus", status, f"no GPU: {_no_gpu_reason(nvml, exc)}", fix)
    try:
        count = nvml.nvmlDeviceGetCount()
        names = [_nvml_text(nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i)))
                 for i in range(count)]
        driver = _nvml_text(nvml.nvmlSystemGetDriverVersion())
        cuda = int(nvml.nvmlSystemGetCudaDriverVersion())
    finally:
        nvml.nvmlShutdown()
    if count == 0:
        return Check("gpus", status, "no GPU: the driver is loaded but NVML finds no device", fix)
    if count < gpus_needed:
        return Check("gpus", status, f"{count} GPU, {scale} scale needs {gpus_needed}", fix)
    cuda_v = (cuda // 1000, (cuda % 1000) // 10)
    detail = (f"{count} GPU ({', '.join(dict.fromkeys(names))}); driver {driver}, "
              f"CUDA {cuda_v[0]}.{cuda_v[1]}")
    need = min_cuda()
    if cuda_v < need:
        return Check("gpus", status, f"{detail}: older than the CUDA {need[0]}.{need[1]} "
                     "the GPU image's torch needs", "upgrade the NVIDIA driver")
    return Check("gpus", "ok", detail)


def check_broker(cfg: Config) -> Check:
    from runner.embedded_broker import INSTALL_HINT, find_mosquitto

    if cfg.bus_url:
        u = urlsplit(cfg.bus_url)
        host, port = u.hostname or "localhost", u.port or (8883 if u.scheme in ("mqtts", "ssl") else 1883)
        try:
            with socket.create_connection((host, port), timeout=PING_TIMEOUT_S):
                pass
        except OSError as exc:
            return Check("broker", "fail", f"{host}:{port} does not answer ({exc.strerror or exc})",
                         "start the broker, or correct [bus] url in the config")
        return Check("broker", "ok", f"{host}:{port} answers")
    exe = find_mosquitto()
    if exe is None:
        return Check("broker", "fail", "Mosquitto is not installed (the embedded broker needs it)",
                     INSTALL_HINT)
    try:
        out = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=5).stdout
        version = next((ln.split(" version ")[-1].split()[0] for ln in out.splitlines()
                        if " version " in ln), "")
    except (OSError, subprocess.SubprocessError):
        version = ""
    return Check("broker", "ok", f"embedded Mosquitto {version or ''} at {exe}".replace("  ", " "))


def check_assets(cfg: Config, scale: str, specs: list[TaskSpec]) -> tuple[list[Check], int]:
    """A line per task and scale that declares assets; the bytes `scale` still has to fetch."""
    store = AssetStore(cfg.home)
    try:
        lock = store.read_lock()
    except AssetError as exc:
        return [Check("assets", "fail", str(exc), f"move {store.lock_path} aside and run "
                      "`mlrb assets fetch --all` (or `mlrb assets import`)")], 0
    checks: list[Check] = []
    missing_bytes = 0
    for sc in SCALES:
        if not any(s.assets_for(sc) for s in specs):
            checks.append(Check(f"assets {sc}", "ok", f"no task needs staged assets at {sc} scale"))
            continue
        for spec in specs:
            items = [TaskAsset(spec.name, a) for a in spec.assets_for(sc)]
            if not items:
                continue
            states = [store.state(i, lock) for i in items]
            gone = [s for s in states if s.status != "present"]
            size = sum(s.size_bytes for s in states)
            name = f"assets {spec.name}/{sc}"
            if not gone:
                commits = ", ".join(f"{s.asset.name}@{(s.commit or '?')[:8]}" for s in states)
                checks.append(Check(name, "ok", f"{len(states)} present, {human(size)}, locked: {commits}"))
                continue
            if sc == scale:
                missing_bytes += sum(s.size_bytes for s in gone)
            gated = [s.asset.name for s in gone if s.asset.gated]
            token = " (gated: set HF_TOKEN)" if gated and not (cfg.hub_token or os.environ.get("HF_TOKEN")) else ""
            what = ", ".join(f"{s.asset.name} {s.status}" for s in gone)
            checks.append(Check(name, "fail" if sc == scale else "warn",
                                f"{len(gone)} of {len(states)} not staged: {what}",
                                f"run `mlrb assets fetch {spec.name} --scale {sc}`{token}"))
    return checks, missing_bytes


def check_disk(cfg: Config, scale: str, missing_bytes: int, specs: list[TaskSpec]) -> Check:
    free = free_bytes(cfg.home)
    runs = WORKSPACE_BYTES if scale == "full" and specs else 0
    need = missing_bytes + max(MARGIN_BYTES, int(missing_bytes * MARGIN_FRACTION)) + runs
    detail = (f"{human(free)} free at {cfg.home}; {scale} scale needs {human(need)} "
              f"({human(missing_bytes)} of assets to fetch"
              + (f", {human(runs)} for a run's workspace)" if runs else ")"))
    if free < need:
        return Check("disk", "fail", detail, f"free space on the disk that holds {cfg.home}, "
                     "or point MLRB_HOME at a bigger one")
    return Check("disk", "ok", detail)


def check_providers(cfg: Config) -> list[Check]:
    out = []
    for kind, var in PROVIDER_KEYS.items():
        if os.environ.get(var):
            out.append(Check(f"provider {kind}", "ok", f"{var} is set (in the environment)"))
        elif (cfg.providers.get(kind) or {}).get("api_key"):
            out.append(Check(f"provider {kind}", "ok", "a key is set in the config file"))
        else:
            out.append(Check(f"provider {kind}", "warn", f"no key: the {kind} agent cannot run "
                             "(the scripted baseline needs none)",
                             f"export {var}=… on the runner's host, or set [providers.{kind}] api_key"))
    return out


def diagnose(scale: str = "full", *, nvml: Any = None,
             docker_client: Callable[[], tuple[Any, str]] = _docker_client) -> Report:
    """Every check, in the order a user fixes them."""
    cfg, config_check = check_config()
    checks = [config_check]
    try:
        specs = list_tasks()
    except TaskSpecError as exc:
        specs = []
        checks.append(Check("tasks", "fail", str(exc), "correct the task bundle it names"))
    need = _needs(scale, specs)
    client, why = docker_client()
    try:
        checks += [check_docker(cfg, scale, client, why), *check_images(cfg, need, client),
                   check_gpu_runtime(cfg, scale, need, client), check_gpus(scale, need, nvml),
                   check_broker(cfg)]
        proxy = check_proxy_image(cfg, scale, specs, client)
        if proxy is not None:
            checks.append(proxy)
    finally:
        if client is not None:
            client.close()
    asset_checks, missing = check_assets(cfg, scale, specs)
    checks += asset_checks
    checks.append(check_disk(cfg, scale, missing, specs))
    checks += check_providers(cfg)
    return Report(scale, checks)
