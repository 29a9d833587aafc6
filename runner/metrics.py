"""Training metrics from a sandbox: the metrics file the in-sandbox helper appends to, and
log lines the runner recognises in the output (Hugging Face Trainer's log dicts).

Both are written by code the agent controls, so every line is untrusted: bad lines are
counted and skipped, and only finite numbers become metrics.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

MAX_LINE = 16 * 1024
MAX_VALUES = 32
# {'loss': 0.4, 'learning_rate': 1e-05, 'epoch': 0.5} as printed by transformers.Trainer
_TRAINER_LINE = re.compile(r"^\s*(\{\s*'[A-Za-z_][\w./-]*'\s*:\s*[-+0-9.eEinfa]+.*\})\s*$")


def clean_values(values: Any) -> dict[str, float]:
    if not isinstance(values, dict):
        return {}
    out: dict[str, float] = {}
    for k, v in list(values.items())[:MAX_VALUES]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        name = str(k)[:80]
        if name in ("step", "ts", "global_step"):
            continue
        out[name] = float(v)
    return out


def _step(x: Any) -> int | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return int(x)


def parse_metrics_line(line: str) -> dict[str, Any] | None:
    """One line of the metrics file -> {"step", "values"}; None for a bad line."""
    if len(line) > MAX_LINE:
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    values = clean_values(obj.get("values"))
    if not values:
        return None
    return {"step": _step(obj.get("step")), "values": values}


def parse_trainer_line(line: str) -> dict[str, Any] | None:
    """A Trainer log dict printed to stdout -> {"step", "values"}; None if it is not one."""
    if len(line) > MAX_LINE:
        return None
    m = _TRAINER_LINE.match(line)
    if not m:
        return None
    try:
        obj = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    values = clean_values(obj)
    if not values:
        return None
    return {"step": _step(obj.get("step", obj.get("global_step"))), "values": values}


class MetricsTail:
    """Follows the metrics file in a host workspace from where it last stopped.

    The file sits in a folder the agent can write, so it is opened without following
    symlinks and must be a regular file inside the workspace.
    """

    def __init__(self, workspace: Path, relpath: str) -> None:
        self.workspace = workspace.resolve()
        self.path = self.workspace / relpath
        self.offset = 0
        self.rejected = 0
        self._partial = b""

    def _safe(self) -> bool:
        try:
            parent = self.path.parent.resolve(strict=True)
        except OSError:
            return False
        return parent == self.workspace or self.workspace in parent.parents

    def read(self, max_bytes: int = 1 << 20) -> list[dict[str, Any]]:
        if not self._safe():
            return []
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return []
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return []
            if st.st_size < self.offset:  # truncated or replaced: start again
                self.offset, self._partial = 0, b""
            os.lseek(fd, self.offset, os.SEEK_SET)
            chunk = os.read(fd, max_bytes)
        finally:
            os.close(fd)
        pos = self.offset - len(self._partial)  # where the first line below starts in the file
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            self._partial, self.rejected = b"", self.rejected + 1
        out = []
        for raw in lines:
            pos += len(raw) + 1
            if not raw.strip():
                continue
            parsed = parse_metrics_line(raw.decode("utf-8", errors="replace"))
            if parsed is None:
                self.rejected += 1
            else:
                parsed["offset"] = pos  # the next line's start: where an adopted run resumes
                out.append(parsed)
        return out
