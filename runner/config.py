"""Where things live and how the engine is reached: MLRB_HOME, the config file, daemon.json.

The config file is TOML at `$MLRB_HOME/config.toml` (or the path in MLRB_CONFIG):

    [bus]
    url = "mqtt://broker.example:1883"   # an external broker; omit for the embedded one
    prefix = "mlrb/v1"
    [sandbox]
    backend = "auto"                     # auto | docker | local
    image = "mlrb-sandbox:latest"
    [runner]
    max_runs = 4
    [console]
    repaint_hz = 8
    [console.keys]                       # binding id -> keys, e.g. kill = "ctrl+x"
    [providers.anthropic]                # keys stay on the host; environment variables win
    base_url = "..."
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    pass


def mlrb_home() -> Path:
    env = os.environ.get("MLRB_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "mlrb"


@dataclass
class Config:
    home: Path
    bus_url: str | None = None  # None: the embedded broker
    prefix: str = "mlrb/v1"
    backend: str = "auto"
    image: str = "mlrb-sandbox:latest"
    max_runs: int = 4
    repaint_hz: float = 8.0
    keys: dict[str, str] = field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

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


def load_config(home: Path | None = None) -> Config:
    home = home or mlrb_home()
    path = Path(os.environ.get("MLRB_CONFIG", home / "config.toml"))
    raw: dict[str, Any] = {}
    if path.is_file():
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    bus = raw.get("bus", {})
    sandbox = raw.get("sandbox", {})
    runner = raw.get("runner", {})
    console = raw.get("console", {})
    try:
        cfg = Config(
            home=home,
            bus_url=os.environ.get("MLRB_BUS_URL") or bus.get("url"),
            prefix=str(bus.get("prefix", "mlrb/v1")).strip("/"),
            backend=os.environ.get("MLRB_SANDBOX") or str(sandbox.get("backend", "auto")),
            image=os.environ.get("MLRB_SANDBOX_IMAGE") or str(sandbox.get("image", "mlrb-sandbox:latest")),
            max_runs=int(runner.get("max_runs", 4)),
            repaint_hz=float(console.get("repaint_hz", 8.0)),
            keys={str(k): str(v) for k, v in console.get("keys", {}).items()},
            providers=raw.get("providers", {}),
            raw=raw,
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if cfg.backend not in ("auto", "docker", "local"):
        raise ConfigError(f"{path}: sandbox.backend must be auto, docker or local, not {cfg.backend!r}")
    if cfg.max_runs < 1:
        raise ConfigError(f"{path}: runner.max_runs must be at least 1")
    return cfg


@dataclass(frozen=True)
class DaemonInfo:
    pid: int
    bus_url: str
    prefix: str
    runner_id: str
    db: str
    broker: str  # "mosquitto" | "external"
    started: float


def read_daemon_info(cfg: Config) -> DaemonInfo | None:
    """The running daemon's details, or None when none runs (a stale file is ignored)."""
    try:
        info = DaemonInfo(**json.loads(cfg.daemon_file.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return info


def write_daemon_info(cfg: Config, info: DaemonInfo) -> None:
    cfg.home.mkdir(parents=True, exist_ok=True)
    tmp = cfg.daemon_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(info.__dict__, indent=2))
    tmp.replace(cfg.daemon_file)
