"""Loading MLRB task bundles.

A bundle is a folder `tasks/<name>/` holding:

- `task.toml`     the spec (validated here; a broken one gives a clear error naming the file)
- `prompt.md`     what the agent is told; `{placeholders}` are filled from the spec and scale
- `starter/`      files copied into the workspace (the competition's starter code, if any)
- `smoke/`        smoke-scale material: `prepare.py` makes the data into the workspace
- `scorer/`       the protected scorer (`score.py`) and its held-out data; never mounted
                  where the agent can read or write it
- `baseline.py`   the scripted baseline: `plan(scale) -> list[dict]` of tool calls

This module knows nothing of the engine: the runner calls it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

Scale = Literal["smoke", "full"]
SCALES: tuple[str, ...] = ("smoke", "full")
TASKS_ROOT = Path(__file__).resolve().parent


class TaskSpecError(ValueError):
    """A task bundle that cannot be used; the message names the file and the field."""


# a host as a forward proxy's domain list takes it: a name, or ".name" for it and its subdomains
HOST_RE = re.compile(r"^\.?(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                     r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class ScaleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    time_s: float = Field(gt=0, description="wall-clock budget, paused and scoring time excluded")
    gpus: int = Field(ge=0, default=0)
    cpus: float = Field(gt=0, default=2.0)
    memory_gb: float = Field(gt=0, default=4.0)
    steps: int | None = Field(default=None, gt=0, description="agent step limit")
    tokens: int | None = Field(default=None, gt=0)
    cost_usd: float | None = Field(default=None, gt=0)
    hardware: str = ""
    data: str = Field(default="", description="where this scale's data and models are; {data} in the prompt")
    score_timeout_s: float = Field(gt=0, default=600)
    disk_gb: float | None = Field(default=None, gt=0,
                                  description="workspace quota in GB; none: only the host's floor")
    network: Literal["none", "allowlist"] = Field(
        default="none", description="none: no network; allowlist: only allow_hosts, through a proxy")
    allow_hosts: tuple[str, ...] = Field(
        default=(), description="hosts an allowlist run may reach; '.name' takes its subdomains too")

    @field_validator("allow_hosts")
    @classmethod
    def _hosts_shape(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [h for h in v if not HOST_RE.match(h)]
        if bad:
            raise ValueError(f"not host names: {', '.join(repr(h) for h in bad)} "
                             "(a name like huggingface.co, or .hf.co for it and its subdomains)")
        return v

    @model_validator(mode="after")
    def _hosts_match_policy(self) -> ScaleModel:
        if self.network == "allowlist" and not self.allow_hosts:
            raise ValueError("network = \"allowlist\" needs allow_hosts, the hosts it may reach")
        if self.network == "none" and self.allow_hosts:
            raise ValueError("allow_hosts is set but network is \"none\": set network = \"allowlist\"")
        return self

    @property
    def disk_bytes(self) -> int | None:
        """The workspace quota in bytes (GB are 10**9 bytes, as disks are sold)."""
        return None if self.disk_gb is None else int(self.disk_gb * 1e9)


class ReferenceModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    summary: str = ""
    results: dict[str, Any] = Field(default_factory=dict)


class UpstreamComputeModel(BaseModel):
    """The compute upstream's prompt gives the task, in its words and as figures."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stated: str = Field(min_length=1, description="upstream's `compute` and `time_limit`, verbatim")
    gpus: int = Field(ge=0, description="GPUs upstream gives")
    gpu: str = Field(min_length=1, description="which GPU, as upstream names it")
    ram_gb: float | None = Field(default=None, gt=0, description="host RAM; None: upstream states none")
    disk_gb: float | None = Field(default=None, gt=0, description="disk; None: upstream states none")
    time_limit: str = Field(min_length=1)
    note: str = Field(default="", description="how the full scale here maps onto it, where it differs")


class UpstreamModel(BaseModel):
    """Where the task's definition comes from, field by field, and where this project departs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    repo: str = Field(min_length=1, description="the upstream repository, owner/name on GitHub")
    path: str = Field(min_length=1, description="the file that defines the task there")
    task: str = Field(min_length=1, description="the task's name upstream")
    fields: dict[str, str] = Field(default_factory=dict, description="our field -> upstream's words for it")
    departures: list[str] = Field(default_factory=list, description="where this project differs, and why")
    compute: UpstreamComputeModel | None = None


COMMIT_RE = r"^[0-9a-f]{40}$"
SHA256_RE = r"^[0-9a-f]{64}$"


class AssetModel(BaseModel):
    """A model or dataset the task names, fetched from the Hugging Face hub and staged on the host.

    `revision` is a 40-hex commit when `pinned` (the default). Where the commit is not known when
    the spec is written, `revision` names a branch or tag and `pinned = false`: the first fetch
    resolves it, and the commit, sizes and sha256 it got are locked from then on.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="unique within the task")
    kind: Literal["model", "dataset"]
    repo: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="hub repository id, owner/name")
    pinned: bool = True  # before revision: its check reads it
    revision: str = Field(min_length=1, max_length=200)
    files: tuple[str, ...] = Field(default=("*",), min_length=1,
                                   description="glob patterns of the repository's files to stage")
    configs: tuple[str, ...] = Field(default=(), description="the dataset configs load_dataset names")
    splits: tuple[str, ...] = Field(default=(), description="the splits the task reads, for the record")
    size_bytes: int = Field(gt=0, description="expected bytes on disk (an estimate unless sha256 is given)")
    sha256: dict[str, str] = Field(default_factory=dict, description="file path -> sha256, where known")
    gated: bool = Field(default=False, description="the hub asks for a token with access (HF_TOKEN)")
    audience: Literal["agent", "scorer"] = Field(
        alias="for", description="agent: mounted for the agent; scorer: the scorer only, never the agent")
    scales: tuple[Scale, ...] = Field(default=("full",), min_length=1)
    note: str = ""

    @field_validator("revision")
    @classmethod
    def _revision_shape(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("pinned", True) and not re.fullmatch(COMMIT_RE, v):
            raise ValueError(f"{v!r} is not a 40-hex commit; name a commit, or set "
                             "pinned = false to lock the commit the first fetch gets")
        if v.startswith("/") or ".." in v or any(c.isspace() for c in v):
            raise ValueError(f"{v!r} is not a branch, tag or commit")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha256_shape(cls, v: dict[str, str]) -> dict[str, str]:
        for path, digest in v.items():
            if not re.fullmatch(SHA256_RE, digest):
                raise ValueError(f"{path!r}: {digest!r} is not 64 lowercase hex digits")
        return v

    @property
    def repo_type(self) -> str:
        return self.kind


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,40}$")
    title: str = Field(min_length=1)
    source: str = Field(min_length=1, description="the competition this task comes from")
    metric: str = Field(min_length=1, description="the headline metric's name")
    higher_is_better: bool = True
    deliverable: str = Field(min_length=1)
    data: str = ""
    rules: list[str] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=list, description="every metric the scorer reports")
    smoke: ScaleModel
    full: ScaleModel
    reference: ReferenceModel = Field(default_factory=ReferenceModel)
    integrity: list[str] = Field(default_factory=list, description="integrity checks that apply")
    assets: list[AssetModel] = Field(default_factory=list, description="models and datasets to stage")
    upstream: UpstreamModel | None = None

    @model_validator(mode="after")
    def _unique_asset_names(self) -> SpecModel:
        seen: set[str] = set()
        for a in self.assets:
            if a.name in seen:
                raise ValueError(f"assets: two assets are named {a.name!r}")
            seen.add(a.name)
        return self


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    source: str
    metric: str
    higher_is_better: bool
    deliverable: str
    data: str
    rules: tuple[str, ...]
    metrics: tuple[str, ...]
    scales: dict[str, ScaleModel]
    reference: ReferenceModel
    integrity: tuple[str, ...]
    dir: Path
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    assets: tuple[AssetModel, ...] = ()
    upstream: UpstreamModel | None = None

    def assets_for(self, scale: str, audience: str | None = None) -> tuple[AssetModel, ...]:
        """The assets a scale needs; `audience` ("agent" or "scorer") narrows them to one side."""
        self.scale(scale)
        return tuple(a for a in self.assets if scale in a.scales
                     and (audience is None or a.audience == audience))

    def assets_text(self, scale: str) -> str:
        """The prompt's `{assets}`: each staged agent-visible asset by its hub id and the call
        that loads it offline, so the agent is told exactly what exists in its sandbox."""
        staged = self.assets_for(scale, "agent")
        if not staged:
            return "Nothing is staged from the hub at this scale: everything you need is in your workspace."
        lines = ["Staged read-only in the sandbox's Hugging Face cache (the hub is offline, so only "
                 "these load; a call that names no revision gets the staged one):"]
        for a in staged:
            at = f" at commit {a.revision[:12]}" if a.pinned else ""
            if a.kind == "model":
                lines.append(f"- model `{a.repo}`{at}: `from_pretrained('{a.repo}')`")
            else:
                calls = [f"`load_dataset('{a.repo}', '{c}')`" for c in a.configs] or \
                        [f"`load_dataset('{a.repo}')`"]
                lines.append(f"- dataset `{a.repo}`{at}: {', '.join(calls)}")
        return "\n".join(lines)

    def scale(self, scale: str) -> ScaleModel:
        if scale not in self.scales:
            raise TaskSpecError(f"{self.name}: unknown scale {scale!r} (use smoke or full)")
        return self.scales[scale]

    @property
    def scorer_dir(self) -> Path:
        return self.dir / "scorer"

    def prompt(self, scale: str) -> str:
        s = self.scale(scale)
        path = self.dir / "prompt.md"
        try:
            template = path.read_text()
        except OSError as exc:
            raise TaskSpecError(f"{path}: {exc.strerror}") from None
        values = {
            "name": self.name,
            "title": self.title,
            "scale": scale,
            "time_h": f"{s.time_s / 3600:.3g}",
            "time_min": f"{s.time_s / 60:g}",
            "time_s": f"{s.time_s:g}",
            "gpus": str(s.gpus),
            "hardware": s.hardware or ("CPU only" if s.gpus == 0 else f"{s.gpus} GPU"),
            "metric": self.metric,
            "workspace": "/workspace",
            "data": s.data or self.data,
            "assets": self.assets_text(scale),
        }
        try:
            return template.format_map(_Strict(values))
        except (KeyError, ValueError) as exc:
            raise TaskSpecError(f"{path}: bad placeholder {exc}") from None


class _Strict(dict[str, str]):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def read_toml(path: Path, error: type[Exception]) -> dict[str, Any]:
    """A TOML file's table; `error` naming the file when it cannot be read or parsed."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None


def load_spec_file(path: Path) -> TaskSpec:
    raw = read_toml(path, TaskSpecError)
    try:
        m = SpecModel.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(e['loc'], raw)}: {e['msg']}" for e in exc.errors())
        raise TaskSpecError(f"{path}: {problems}") from None
    if m.name != path.parent.name:
        raise TaskSpecError(f"{path}: name {m.name!r} does not match its folder {path.parent.name!r}")
    return TaskSpec(
        name=m.name, title=m.title, source=m.source, metric=m.metric,
        higher_is_better=m.higher_is_better, deliverable=m.deliverable, data=m.data,
        rules=tuple(m.rules), metrics=tuple(m.metrics or [m.metric]),
        scales={"smoke": m.smoke, "full": m.full}, reference=m.reference,
        integrity=tuple(m.integrity), dir=path.parent, raw=raw, assets=tuple(m.assets),
        upstream=m.upstream,
    )


def _where(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    """A validation error's field, with an asset named as well as numbered: assets[2] (phi-2).revision."""
    parts = [str(x) for x in loc]
    if len(loc) >= 2 and loc[0] == "assets" and isinstance(loc[1], int):
        items = raw.get("assets")
        name = items[loc[1]].get("name") if isinstance(items, list) and loc[1] < len(items) \
            and isinstance(items[loc[1]], dict) else None
        head = f"assets[{loc[1]}]" + (f" ({name})" if isinstance(name, str) else "")
        return ".".join([head, *parts[2:]])
    return ".".join(parts) or "(top)"


def task_roots() -> list[Path]:
    """Where bundles are looked up: the seven shipped ones, then MLRB_TASKS_PATH (a
    colon-separated list of folders of extra bundles, e.g. a lab's own tasks)."""
    extra = [Path(p).expanduser() for p in os.environ.get("MLRB_TASKS_PATH", "").split(os.pathsep) if p]
    return [TASKS_ROOT, *extra]


def _spec_paths(root: Path | None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for r in [root] if root is not None else task_roots():
        for p in sorted(r.glob("*/task.toml")):
            found.setdefault(p.parent.name, p)
    return found


def list_tasks(root: Path | None = None) -> list[TaskSpec]:
    return [load_spec_file(p) for p in _spec_paths(root).values()]


def task_names(root: Path | None = None) -> list[str]:
    return list(_spec_paths(root))


def load_task(name: str, root: Path | None = None) -> TaskSpec:
    path = _spec_paths(root).get(name)
    if path is None:
        known = ", ".join(task_names(root)) or "none"
        raise TaskSpecError(f"unknown task {name!r} (known: {known})")
    return load_spec_file(path)


def prepare_workspace(spec: TaskSpec, scale: str, dest: Path) -> None:
    """Put what the agent starts with into `dest`: starter files, then the scale's data."""
    spec.scale(scale)
    dest.mkdir(parents=True, exist_ok=True)
    starter = spec.dir / "starter"
    if starter.is_dir():
        shutil.copytree(starter, dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    prepare = spec.dir / scale / "prepare.py"
    if prepare.is_file():
        proc = subprocess.run(
            [sys.executable, str(prepare), str(dest)],
            capture_output=True, text=True, timeout=600,
        )
        if proc.returncode != 0:
            raise TaskSpecError(
                f"{prepare}: failed with exit code {proc.returncode}: {proc.stderr[-2000:]}"
            )


def scripted_plan(spec: TaskSpec, scale: str) -> list[dict[str, Any]]:
    """The scripted baseline's tool calls, in order: [{"name": ..., "args": {...}}, ...]."""
    spec.scale(scale)
    path = spec.dir / "baseline.py"
    if not path.is_file():
        raise TaskSpecError(f"{spec.name}: no scripted baseline ({path} is missing)")
    mod_spec = importlib.util.spec_from_file_location(f"tasks.{spec.name}.baseline", path)
    if mod_spec is None or mod_spec.loader is None:
        raise TaskSpecError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    plan = module.plan(scale)
    if not isinstance(plan, list) or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("args"), dict)
        for c in plan
    ):
        raise TaskSpecError(f"{path}: plan() must return a list of {{'name', 'args'}} dicts")
    return plan


SCORELIB = TASKS_ROOT / "scorelib.py"  # shared by every scorer; mounted beside it read-only


def score_command(spec: TaskSpec, scale: str, model: str | None = None,
                  workspace: str = "/workspace", scorer: str = "/scorer",
                  lib: str = "/scorer_lib") -> list[str]:
    """The scorer's argv, as run in the scoring container (workspace, scorer and the shared
    scorer library `lib`, holding scorelib.py, all read-only).

    `model` is the submitted folder relative to the workspace; without it the scorer looks
    for `.mlrb/submission.json`, then `model/`, then the one model folder it can find.
    """
    spec.scale(scale)
    argv = ["env", f"PYTHONPATH={lib}", "python3", f"{scorer}/score.py", "--workspace", workspace,
            "--scale", scale]
    if model:
        argv += ["--model", model]
    return argv


class ScoreOutputError(ValueError):
    """A scorer's output that holds no usable result."""


def parse_score_output(stdout: str) -> dict[str, Any]:
    """The scorer's result: the last stdout line that is a JSON object, checked for shape."""
    lines = [ln.strip() for ln in stdout.strip().splitlines() if ln.strip().startswith("{")]
    if not lines:
        tail = stdout.strip()[-300:] or "(nothing)"
        raise ScoreOutputError(f"scorer printed no JSON result line; output ends: {tail}")
    try:
        out = json.loads(lines[-1])
    except ValueError as exc:
        raise ScoreOutputError(f"scorer's last JSON line does not parse: {exc}") from None
    if not isinstance(out, dict):
        raise ScoreOutputError("scorer's result is not a JSON object")
    for key in ("metric", "value"):
        if key not in out:
            raise ScoreOutputError(f"scorer's result has no {key!r} field")
    value = out["value"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
        raise ScoreOutputError(f"scorer's value is not a finite number: {value!r}")
    if not isinstance(out.get("metrics", {}), dict) or not isinstance(out.get("details", {}), dict):
        raise ScoreOutputError("scorer's metrics and details must be objects")
    out.setdefault("metrics", {})
    out.setdefault("details", {})
    out.setdefault("error", None)
    return out
