"""Where things live and how the engine is reached: MLRB_HOME, the config file, daemon.json.

The config file is TOML at `$MLRB_HOME/config.toml` (or the path in MLRB_CONFIG):

    [bus]
    url = "mqtts://broker.example:8883"  # an external broker; omit for the embedded one
    prefix = "mlrb/v1"
    username = "gpu-host-a"              # this host's account (a runner's is its runner id)
    password = "..."                     # MLRB_BUS_PASSWORD wins
    ca_file = "/etc/mlrb/ca.crt"         # verifies the broker's certificate (mqtts://)
    cert_file = "/etc/mlrb/me.crt"       # a client certificate instead of a password
    key_file = "/etc/mlrb/me.key"
    [sandbox]
    backend = "auto"                     # auto | docker | local
    image = "mlrb-sandbox:latest"
    scorer_image = "mlrb-scorer:latest"  # scoring's own image (mlrb-scorer-gpu:latest on a GPU host)
    [runner]
    max_runs = 4
    min_free_gb = 5                      # the host's free-space floor under MLRB_HOME
    workspace_quota = "auto"             # auto: the kernel where it can; watch: measure only
    [console]
    repaint_hz = 8
    ack_timeout_s = 10                   # how long `mlrb pause` etc. wait for the runner's answer
    [alarms]                             # stall alarms; 0 turns one off
    quiet_min = 30                       # a running run with no event
    gpu_idle_min = 20                    # GPUs idle while a command runs
    llm_call_s = 600                     # an LLM call still waiting
    [console.keys]                       # binding id -> keys, e.g. kill = "ctrl+x"
    [notify]                             # who is called when an operator is needed (runner.notify)
    urls = ["ntfy://mlrb-lab", "slack://T0/B0/XYZ"]   # Apprise URLs; none: the daemon sends nothing
    kinds = {approval = true, ended = true, limit = true, stall = true, integrity = true, broker = true}
    window_s = 600                       # one per run per kind within this many seconds
    digest_after = 5                     # more than this many within digest_s: one digest
    digest_s = 60
    broker_after_s = 30                  # the broker away this long before anyone is called
    console = true                       # an open console rings the bell and sends OSC 9
    [providers.anthropic]                # keys stay on the host; environment variables win
    base_url = "..."
    thinking_budget = 8000               # extended thinking; stream = false, cache = false turn those off
    [providers.openai]
    reasoning_effort = "high"            # o1, o3, o4, gpt-5: minimal | low | medium | high

Each table is a model: an unknown key or a value of the wrong type is a ConfigError that
names the key and the file.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Backend = Literal["auto", "docker", "local"]
BACKENDS: tuple[str, ...] = get_args(Backend)


class ConfigError(ValueError):
    pass


def mlrb_home() -> Path:
    env = os.environ.get("MLRB_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "mlrb"


class _Table(BaseModel):
    # a typo must be reported, never ignored
    model_config = ConfigDict(extra="forbid", frozen=True)


class BusTable(_Table):
    url: str | None = None  # None: the embedded broker
    prefix: str = "mlrb/v1"
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class SandboxTable(_Table):
    backend: Backend = "auto"
    image: str = "mlrb-sandbox:latest"
    scorer_image: str = "mlrb-scorer:latest"


QuotaMode = Literal["auto", "watch"]


class RunnerTable(_Table):
    max_runs: int = Field(default=4, ge=1)
    # below this many GB free on the filesystem of MLRB_HOME, runs hold (runner.disk_watch)
    min_free_gb: float = Field(default=5, ge=0)
    # auto: a quota'd filesystem image per workspace where the host allows it, else a watcher
    workspace_quota: QuotaMode = "auto"


class ConsoleTable(_Table):
    repaint_hz: float = Field(default=8.0, gt=0)
    ack_timeout_s: float = Field(default=10.0, gt=0)  # a control command's wait for its control.ack
    keys: dict[str, str] = Field(default_factory=dict)  # binding id -> keys


class AlarmsTable(_Table):
    """Stall alarms (runner.stall_watch): how long each condition may last; 0 turns it off."""

    quiet_min: float = Field(default=30, ge=0)
    gpu_idle_min: float = Field(default=20, ge=0)
    llm_call_s: float = Field(default=600, ge=0)


class NotifyKinds(_Table):
    """Which triggers call an operator (runner.notify.NOTIFY_KINDS); each is on by default."""

    approval: bool = True  # a tool call waits for approval
    ended: bool = True  # a run ended
    limit: bool = True  # a limit reached 80%
    stall: bool = True  # a stall alarm fired
    integrity: bool = True  # an integrity flag was raised
    broker: bool = True  # the daemon lost its broker


class NotifyTable(_Table):
    """Notifications: the daemon's Apprise targets and the console's bell (runner.notify)."""

    urls: list[str] = Field(default_factory=list, repr=False)  # may hold tokens
    kinds: NotifyKinds = Field(default_factory=NotifyKinds)
    window_s: float = Field(default=600, ge=0)
    digest_after: int = Field(default=5, ge=1)
    digest_s: float = Field(default=60, gt=0)
    broker_after_s: float = Field(default=30, ge=0)
    console: bool = True

    @field_validator("urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for i, url in enumerate(urls):
            if "://" not in url:
                raise ValueError(f"urls[{i}] is not an Apprise URL (scheme://...)")
        return urls

    def enabled(self, kind: str) -> bool:
        return bool(getattr(self.kinds, kind, False))


class ProviderTable(_Table):
    """Options of one LLM provider's agent (runner.agents.make_agent checks them again)."""

    model: str | None = None
    api_key: str | None = None
    base_url: str | None = None
    max_tokens: int | None = None
    context_window: int | None = None
    max_retries: int | None = None
    timeout_s: float | None = None
    backoff_s: float | None = None
    max_backoff_s: float | None = None
    stream: bool | None = None  # stream replies into the run view (default on)
    cache: bool | None = None  # prompt caching (default on)
    thinking_budget: int | None = None  # anthropic: extended thinking, tokens per reply
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None  # openai reasoning models


class ProvidersTable(_Table):
    anthropic: ProviderTable | None = None
    openai: ProviderTable | None = None


class HubTable(_Table):
    """Where models and datasets are fetched from (runner.assets); the token stays on the host."""

    endpoint: str | None = None  # HF_ENDPOINT wins
    token: str | None = None  # for gated repositories; HF_TOKEN wins


class ConfigFile(_Table):
    """The config file: one model per table."""

    bus: BusTable = Field(default_factory=BusTable)
    sandbox: SandboxTable = Field(default_factory=SandboxTable)
    runner: RunnerTable = Field(default_factory=RunnerTable)
    console: ConsoleTable = Field(default_factory=ConsoleTable)
    alarms: AlarmsTable = Field(default_factory=AlarmsTable)
    providers: ProvidersTable = Field(default_factory=ProvidersTable)
    hub: HubTable = Field(default_factory=HubTable)
    notify: NotifyTable = Field(default_factory=NotifyTable)


@dataclass
class Config:
    home: Path
    bus_url: str | None = None  # None: the embedded broker
    prefix: str = "mlrb/v1"
    bus: BusTable = field(default_factory=BusTable)  # credentials and TLS files of bus_url
    backend: str = "auto"
    image: str = "mlrb-sandbox:latest"
    scorer_image: str = "mlrb-scorer:latest"
    max_runs: int = 4
    min_free_gb: float = 5.0
    workspace_quota: str = "auto"
    repaint_hz: float = 8.0
    ack_timeout_s: float = 10.0
    keys: dict[str, str] = field(default_factory=dict)
    alarms: AlarmsTable = field(default_factory=AlarmsTable)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    hub_endpoint: str | None = None
    hub_token: str | None = field(default=None, repr=False)
    notify: NotifyTable = field(default_factory=NotifyTable)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold keys and tokens

    @property
    def broker_dir(self) -> Path:
        """The embedded broker's files: its config, accounts and credentials."""
        return self.home / "broker"

    @property
    def db_path(self) -> Path:
        return self.home / "mlrb.db"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def daemon_file(self) -> Path:
        return self.home / "daemon.json"

    @property
    def log_path(self) -> Path:
        return self.home / "daemon.log"


_WANTED = {"float": "a number", "int": "an integer", "string": "a string", "bool": "true or false",
           "dict": "a table", "model": "a table", "list": "a list"}


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the table at `loc` accepts."""
    model: type[BaseModel] = ConfigFile
    for part in loc:
        annotation = model.model_fields[str(part)].annotation
        sub = next((a for a in (annotation, *get_args(annotation))
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            return []
        model = sub
    return sorted(model.model_fields)


def _describe(error: Any) -> str:
    """One pydantic error as a sentence that names the key."""
    loc = tuple(error["loc"])
    where = ".".join(str(p) for p in loc)
    kind, got, ctx = error["type"], error["input"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown key {where!r} (known: {', '.join(_known_keys(loc[:-1]))})"
    if kind == "literal_error":
        return f"{where} must be {str(ctx['expected']).replace(chr(39), '')}, not {got!r}"
    if kind == "greater_than_equal":
        return f"{where} must be at least {ctx['ge']:g}"
    if kind == "greater_than":
        return f"{where} must be more than {ctx['gt']:g}"
    wanted = _WANTED.get(kind.split("_")[0])
    if wanted is not None:
        return f"{where} must be {wanted}, got {got!r}"
    return f"{where}: {error['msg']}"


def load_config(home: Path | None = None) -> Config:
    """The configuration: the file's tables (checked by their models), then the environment."""
    home = home or mlrb_home()
    path = Path(os.environ.get("MLRB_CONFIG", home / "config.toml"))
    raw: dict[str, Any] = {}
    if path.is_file():
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        file = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + "; ".join(_describe(e) for e in exc.errors())) from None
    backend = os.environ.get("MLRB_SANDBOX") or file.sandbox.backend
    if backend not in BACKENDS:
        raise ConfigError(f"MLRB_SANDBOX must be {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}, "
                          f"not {backend!r}")
    providers = {name: table.model_dump(exclude_unset=True)
                 for name, table in file.providers if table is not None}
    return Config(
        home=home,
        bus_url=os.environ.get("MLRB_BUS_URL") or file.bus.url,
        prefix=file.bus.prefix.strip("/"),
        bus=file.bus.model_copy(update={
            "username": os.environ.get("MLRB_BUS_USERNAME") or file.bus.username,
            "password": os.environ.get("MLRB_BUS_PASSWORD") or file.bus.password}),
        backend=backend,
        image=os.environ.get("MLRB_SANDBOX_IMAGE") or file.sandbox.image,
        scorer_image=os.environ.get("MLRB_SCORER_IMAGE") or file.sandbox.scorer_image,
        max_runs=file.runner.max_runs,
        min_free_gb=file.runner.min_free_gb,
        workspace_quota=file.runner.workspace_quota,
        repaint_hz=file.console.repaint_hz,
        ack_timeout_s=file.console.ack_timeout_s,
        keys=dict(file.console.keys),
        alarms=file.alarms,
        providers=providers,
        hub_endpoint=os.environ.get("HF_ENDPOINT") or file.hub.endpoint,
        hub_token=(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
                   or file.hub.token),
        notify=file.notify,
        raw=raw,
    )


@dataclass(frozen=True)
class DaemonInfo:
    pid: int
    bus_url: str
    prefix: str
    runner_id: str
    db: str
    broker: str  # "mosquitto" | "external"
    started: float
    adopted: list[str] = field(default_factory=list)  # live runs it took over at its start
    orphans: list[str] = field(default_factory=list)  # sandboxes it stopped: no live run owned them


def read_daemon_info(cfg: Config) -> DaemonInfo | None:
    """The running daemon's details, or None when none runs (a stale file is ignored)."""
    try:
        info = DaemonInfo(**json.loads(cfg.daemon_file.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return info if pid_alive(info.pid) else None


def pid_alive(pid: int) -> bool:
    """Whether a process runs: a zombie nobody reaped yet (a killed daemon whose parent is
    gone) is not running, though `kill(pid, 0)` still finds it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc here: kill's word stands


def private_home(cfg: Config) -> Path:
    """MLRB_HOME, created 0700: it holds every transcript and the bus credentials."""
    cfg.home.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.home, 0o700)
    return cfg.home


def write_daemon_info(cfg: Config, info: DaemonInfo) -> None:
    private_home(cfg)
    tmp = cfg.daemon_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(info.__dict__, indent=2))
    tmp.replace(cfg.daemon_file)
