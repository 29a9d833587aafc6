"""Scripts the scripted baselines write into a workspace (real files, so they are linted
and tested like any code); `write_calls` turns them into `write_file` tool calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def write_calls(*names: str) -> list[dict[str, Any]]:
    return [{"name": "write_file", "args": {"path": n, "content": (HERE / n).read_text()}}
            for n in names]
