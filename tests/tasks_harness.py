"""Runs a task's scripted baseline the way a local sandbox would, for the task tests:
prepare the workspace, execute the plan's tool calls with subprocess, score the submission
with the protected scorer in a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.api import (
    SCORELIB,
    TaskSpec,
    parse_score_output,
    prepare_workspace,
    score_command,
    scripted_plan,
)

METRICS = ".mlrb/metrics.jsonl"


@dataclass
class BaselineRun:
    workspace: Path
    submitted: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _event(run: BaselineRun, kind: str, data: dict[str, Any]) -> None:
    run.events.append({"v": 1, "run": "t", "seq": len(run.events) + 1, "ts": time.time(),
                       "kind": kind, "data": data})


def run_baseline(spec: TaskSpec, workspace: Path, scale: str = "smoke") -> BaselineRun:
    start = time.monotonic()
    prepare_workspace(spec, scale, workspace)
    run = BaselineRun(workspace)
    env = {**os.environ, "MLRB_METRICS_FILE": str(workspace / METRICS), "PYTHONUNBUFFERED": "1"}
    for i, call in enumerate(scripted_plan(spec, scale)):
        name, args = call["name"], call["args"]
        _event(run, "tool.call", {"id": str(i), "name": name, "args": args})
        if name == "write_file":
            target = workspace / args["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(args["content"])
        elif name in ("bash", "run_python"):
            argv = (["bash", "-c", args["command"]] if name == "bash"
                    else [sys.executable, args["path"], *args.get("args", [])])
            proc = subprocess.run(argv, cwd=workspace, env=env, capture_output=True, text=True,
                                  timeout=args.get("timeout_s", 600))
            run.outputs.append(proc.stdout + proc.stderr)
            assert proc.returncode == 0, f"{spec.name}: {args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        elif name == "submit":
            run.submitted = args["path"]
            _event(run, "agent.submit", {"path": args["path"], "summary": args.get("summary", "")})
            break
    run.seconds = time.monotonic() - start
    return run


def score(spec: TaskSpec, workspace: Path, scale: str = "smoke",
          model: str | None = None) -> dict[str, Any]:
    argv = score_command(spec, scale, model=model, workspace=str(workspace),
                         scorer=str(spec.scorer_dir), lib=str(SCORELIB.parent))
    argv[argv.index("python3")] = sys.executable
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return parse_score_output(proc.stdout)
