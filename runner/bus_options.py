"""How a client on this host reaches the bus: the one place the runner, the console, the
recorder and the CLI get their `BusConfig` from.

A configured broker (`[bus] url`) comes with `[bus]`'s account and TLS files. The embedded
broker of a running daemon comes with one of its local accounts, read from its
credentials file (0600, so only this user can): `operator` for consoles and commands,
`viewer` for `--readonly` consoles and the recorder, `runner` for the daemon itself.
"""

from __future__ import annotations

import json

from runner.broker_access import Role
from runner.bus import BusConfig
from runner.config import Config, ConfigError, DaemonInfo


def configured_bus(cfg: Config, url: str | None = None) -> BusConfig:
    """The `[bus]` table's broker (or `url`) with its credentials and TLS files."""
    t = cfg.bus
    target = url or cfg.bus_url
    if not target:
        raise ConfigError("no broker is configured: set [bus] url")
    return BusConfig(target, cfg.prefix, username=t.username, password=t.password,
                     ca_file=t.ca_file, cert_file=t.cert_file, key_file=t.key_file)


def local_bus(cfg: Config, url: str, prefix: str, role: Role) -> BusConfig:
    """The embedded broker at `url`, as this host's local account for `role`."""
    path = cfg.broker_dir / "credentials.json"
    try:
        raw = json.loads(path.read_text())
        name = raw["local"][role]
        password = raw["accounts"][name]["password"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the embedded broker's credentials at {path} "
                          f"({type(exc).__name__}: {exc}); `mlrb up` writes them") from None
    return BusConfig(url, prefix, username=str(name), password=str(password))


def bus_options(cfg: Config, role: Role = "operator",
                info: DaemonInfo | None = None) -> BusConfig | None:
    """How to reach the bus as `role`: the running daemon's broker, else the configured one,
    else None (no broker is known)."""
    if info is not None and info.broker == "mosquitto":
        return local_bus(cfg, info.bus_url, info.prefix, role)
    if cfg.bus_url:
        return configured_bus(cfg)
    if info is not None and info.bus_url:
        return configured_bus(cfg, info.bus_url)
    return None


__all__ = ["bus_options", "configured_bus", "local_bus"]
