"""Who may use the bus, and for what: accounts, roles, Mosquitto's password and ACL files.

Three roles, enforced by the broker's ACL, never by the clients:

- `runner` publishes events, state and job states under its own runner id (the account
  name), and reads controls, jobs, repair requests and the other runners' states;
- `operator` reads events, state and job states, and publishes controls and jobs (both
  under its own name);
- `viewer` reads events, state and job states; it may ask a runner to re-publish what it
  missed.

Mosquitto applies `pattern` lines (with `%u`) to every user whatever its role, so each
account gets its own `user` block, with its name written where `%u` would stand. The
password file uses Mosquitto's PBKDF2-SHA512 format (`$7$`), written here so that no
password ever appears on a command line. Every file here is private: directories 0700,
files 0600.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Role = Literal["runner", "operator", "viewer"]
ROLES: tuple[str, ...] = get_args(Role)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")  # one topic level: no / + # or spaces
PBKDF2_ITERATIONS = 1000
SALT_BYTES = 12


class AccessError(ValueError):
    """A bad account name, role or user file; the message says which."""


def check_name(name: str) -> str:
    """An account name that fits in one topic level (it stands in topics and the ACL)."""
    if not NAME_RE.match(name):
        raise AccessError(f"{name!r} is not a usable account name: use 1-64 letters, digits, "
                          "'.', '_', '@' or '-', starting with a letter or digit")
    return name


def topic_name(text: str) -> str:
    """`text` made into an account-like name (for an identity that no broker checked)."""
    cleaned = re.sub(r"[^A-Za-z0-9._@-]", "_", text)[:64].lstrip("._@-")
    return cleaned or "unknown"


# -- private files ---------------------------------------------------------------------
def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """Create `path` if missing and make it 0600 (SQLite gives its -wal/-shm the same mode)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    return path


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, mode 0600 from the first byte."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- Mosquitto's files -----------------------------------------------------------------
def hash_password(password: str, *, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto's `$7$` password hash: PBKDF2-HMAC-SHA512, base64 salt and digest."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether `password` matches a `$7$` hash (as Mosquitto would decide)."""
    try:
        _, seven, iterations, salt, digest = hashed.split("$")
        if seven != "7":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt),
                                  int(iterations), dklen=len(expected))
    except ValueError:
        return False
    return secrets.compare_digest(got, expected)


def new_password() -> str:
    return secrets.token_urlsafe(24)


def acl_lines(name: str, role: Role, prefixes: Sequence[str]) -> list[str]:
    """One account's block of the ACL file (topics as `runner.bus.Topics` names them)."""
    lines = [f"user {name}"]
    for prefix in prefixes:
        lines += _role_topics(name, role, prefix.strip("/"))
    return lines


def _role_topics(name: str, role: Role, p: str) -> list[str]:
    lines: list[str] = []
    if role == "runner":
        # its events, its state, its jobs' states and the jobs it puts back on the queue
        lines += [f"topic readwrite {p}/runner/{name}/#",
                  f"topic read {p}/run/+/control/+",
                  f"topic read {p}/run/+/repair",
                  f"topic read {p}/jobs/+",
                  # the other runners: who is offline, which jobs they held or started,
                  # and the jobs they put back on the queue
                  f"topic read {p}/runner/+/state",
                  f"topic read {p}/runner/+/job/+",
                  f"topic read {p}/runner/+/requeue"]
    else:
        lines += [f"topic read {p}/runner/+/run/+/event",
                  f"topic read {p}/runner/+/state",
                  f"topic read {p}/runner/+/job/+",  # where each job went
                  f"topic read {p}/submitted/+/+",  # and which wait for a runner
                  f"topic write {p}/run/+/repair"]  # "re-send what I missed" changes nothing
        if role == "operator":
            # a job is submitted under the operator's own name, as a control is
            lines += [f"topic write {p}/run/+/control/{name}", f"topic write {p}/jobs/{name}",
                      f"topic write {p}/submitted/{name}/+"]
    return lines


def acl_text(roles: Mapping[str, Role], prefixes: Sequence[str]) -> str:
    """The whole ACL file: nothing for anonymous clients, one block per account."""
    out = ["# written by mlrb: each account may use only its role's topics", ""]
    for name in sorted(roles):
        out += [*acl_lines(name, roles[name], prefixes), ""]
    return "\n".join(out)


# -- an account store ------------------------------------------------------------------
class Account(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Role
    hash: str = Field(min_length=4)

    @field_validator("hash")
    @classmethod
    def _mosquitto_hash(cls, v: str) -> str:
        if not v.startswith("$7$"):
            raise ValueError("not a PBKDF2-SHA512 ($7$) hash")
        return v


@dataclass(frozen=True)
class Credential:
    username: str
    password: str


class AccountStore:
    """The accounts of one broker in `dir`: `users.json` (roles and hashes), and from it the
    `passwd` and `acl` files that Mosquitto reads. Every change rewrites all three."""

    def __init__(self, dir: Path, prefixes: Sequence[str] = ("mlrb/v1",)) -> None:
        self.dir = Path(dir)
        self.prefixes = tuple(p.strip("/") for p in prefixes)
        self.users_path = self.dir / "users.json"
        self.passwd_path = self.dir / "passwd"
        self.acl_path = self.dir / "acl"

    def load(self) -> dict[str, Account]:
        try:
            raw = json.loads(self.users_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise AccessError(f"{self.users_path}: not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise AccessError(f"{self.users_path}: not an object of accounts")
        try:
            return {check_name(str(n)): Account.model_validate(a) for n, a in raw.items()}
        except ValidationError as exc:
            raise AccessError(f"{self.users_path}: {exc.errors()[0]['msg']}") from None

    def add(self, name: str, role: str, password: str | None = None) -> Credential:
        """Add or replace an account; returns its credential (a new password unless given)."""
        check_name(name)
        if role not in ROLES:
            raise AccessError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        password = password or new_password()
        accounts = self.load()
        accounts[name] = Account(role=role, hash=hash_password(password))  # type: ignore[arg-type]
        self._save(accounts)
        return Credential(name, password)

    def remove(self, name: str) -> bool:
        accounts = self.load()
        if accounts.pop(name, None) is None:
            return False
        self._save(accounts)
        return True

    def write_files(self) -> None:
        """Rewrite `passwd` and `acl` from `users.json` (e.g. after the prefix changed)."""
        self._save(self.load())

    def _save(self, accounts: dict[str, Account]) -> None:
        private_dir(self.dir)
        # roles and hashes only: a password is shown once, when it is made
        write_private(self.users_path, json.dumps(
            {n: a.model_dump() for n, a in sorted(accounts.items())}, indent=2))
        write_private(self.passwd_path, "".join(f"{n}:{a.hash}\n" for n, a in sorted(accounts.items())))
        write_private(self.acl_path, acl_text({n: a.role for n, a in accounts.items()}, self.prefixes))


# -- a fleet's broker ------------------------------------------------------------------
@dataclass(frozen=True)
class FleetBroker:
    """What `mlrb broker config` writes: one TLS listener, authentication and the ACL."""

    dir: Path
    port: int = 8883
    bind: str = "0.0.0.0"
    cafile: str = "ca.crt"
    certfile: str = "server.crt"
    keyfile: str = "server.key"
    client_certs: bool = False  # the certificate's CN is the account name; no passwords
    local_port: int | None = None  # a plain listener on loopback (for tools on the host)
    user: str | None = None  # the user Mosquitto runs as: the owner of these 0600 files

    def conf_text(self) -> str:
        d = self.dir.resolve()

        def at(name: str) -> Path:
            return Path(name) if Path(name).is_absolute() else d / name

        lines = [
            "# written by `mlrb broker config`: a broker for an mlrb fleet",
            "per_listener_settings false",
            "allow_anonymous false",
            *([f"user {self.user}"] if self.user else []),
            f"password_file {d / 'passwd'}",
            f"acl_file {d / 'acl'}",
            "persistence true",
            f"persistence_location {d}/",
            "autosave_interval 10",
            "max_queued_messages 100000",
            "max_inflight_messages 1000",
            "max_packet_size 8388608",
            "",
            f"listener {self.port} {self.bind}",
            f"cafile {at(self.cafile)}",
            f"certfile {at(self.certfile)}",
            f"keyfile {at(self.keyfile)}",
        ]
        if self.client_certs:
            lines += ["require_certificate true", "use_identity_as_username true"]
        else:
            lines += ["require_certificate false"]
        if self.local_port:
            lines += ["", f"listener {self.local_port} 127.0.0.1"]
        return "\n".join(lines) + "\n"

    def write(self, prefix: str = "mlrb/v1") -> Path:
        """Write mosquitto.conf (and empty passwd/acl when there are no accounts yet)."""
        private_dir(self.dir)
        store = AccountStore(self.dir, (prefix,))
        store.write_files()
        conf = self.dir / "mosquitto.conf"
        write_private(conf, self.conf_text())
        return conf


__all__ = [
    "ROLES", "AccessError", "Account", "AccountStore", "Credential", "FleetBroker", "Role",
    "acl_lines", "acl_text", "check_name", "hash_password", "new_password", "private_dir",
    "private_file", "topic_name", "verify_password", "write_private",
]
