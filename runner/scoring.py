"""Scoring a run's submission with the task's protected scorer, in a sandbox of its own:
the submission and the scorer mounted read-only, and the time off the run's clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from runner.assets import AssetError, asset_env, asset_mounts, asset_scratch
from runner.budget import RunClock
from runner.config import mlrb_home
from runner.escapes import strip_escapes
from runner.sandbox import WORKSPACE, Sandbox, SandboxError, SandboxLimits, SandboxSpec
from tasks.api import SCORELIB, ScoreOutputError, TaskSpec, parse_score_output, score_command

SCORER_CPUS = 2.0
SCORER_MEMORY = 8 * 1024**3
SCORER_OUTPUT_CAP = 256 * 1024

Emit = Callable[[str, dict[str, Any]], Awaitable[Any]]
SandboxFactory = Callable[[SandboxSpec], Sandbox]


def assets_metadata(task: TaskSpec, scale: str) -> str:
    """The task's declared assets at this scale as JSON, for a scorer that checks its rules
    against them (llm_merging: only declared models at their pinned commits)."""
    return json.dumps([{"name": a.name, "kind": a.kind, "repo": a.repo, "revision": a.revision,
                        "pinned": a.pinned, "for": a.audience} for a in task.assets_for(scale)])


class Scorer:
    def __init__(self, run: str, task: TaskSpec, scale: str, workspace: Path, image: str,
                 make_sandbox: SandboxFactory, clock: RunClock, emit: Emit,
                 asset_home: Path | None = None) -> None:
        self._run = run
        self._asset_home = asset_home or mlrb_home()
        self._task = task
        self._scale = scale
        self._workspace = workspace
        self._image = image
        self._make_sandbox = make_sandbox
        self._clock = clock
        self._emit = emit
        self._lock = asyncio.Lock()  # one scoring at a time

    async def score(self, final: bool, submission: str | None,
                    gpu_ids: tuple[int, ...]) -> dict[str, Any]:
        """Score the submission (a path in the sandbox, or None), off the clock; emit `score`."""
        async with self._lock:
            self._clock.stop("scoring")
            try:
                result = await self.run_scorer(submission, gpu_ids)
            finally:
                self._clock.release("scoring")
        await self._emit("score", {
            "metric": result.get("metric") or self._task.metric, "value": result.get("value"),
            "metrics": result.get("metrics", {}), "details": result.get("details", {}),
            "error": result.get("error"), "final": final})
        return result

    async def run_scorer(self, submission: str | None, gpu_ids: tuple[int, ...]) -> dict[str, Any]:
        """The scorer's result; a scorer that fails gives {"value": None, "error": why}."""
        task, scale = self._task, self._task.scale(self._scale)
        try:  # the scorer's side: the task's agent-visible assets and its scorer-only ones
            mounts = await asyncio.to_thread(asset_mounts, task, self._scale, self._asset_home,
                                             audience="scorer")
        except AssetError as exc:
            return {"value": None, "error": str(exc)}
        scratch = Path(tempfile.mkdtemp(prefix=f"mlrb-score-{self._run}-"))
        spec = SandboxSpec(
            run=f"{self._run}-score", workspace=scratch, image=self._image,
            limits=SandboxLimits(cpus=SCORER_CPUS, memory_bytes=SCORER_MEMORY, gpus=scale.gpus,
                                 gpu_ids=tuple(str(i) for i in gpu_ids)),
            readonly_mounts=((self._workspace, "/submission"), (task.scorer_dir, "/scorer"),
                             (SCORELIB, "/scorer_lib/scorelib.py"), *mounts),
            env=(*asset_env(mounts), ("MLRB_ASSETS", assets_metadata(task, self._scale))),
            scratch_dirs=asset_scratch(mounts),
        )
        sb = self._make_sandbox(spec)
        model = submission
        if model is not None and model.startswith(WORKSPACE + "/"):
            model = model[len(WORKSPACE) + 1:]
        if sb.isolated:
            argv = score_command(task, self._scale, model, "/submission", "/scorer")
        else:
            argv = score_command(task, self._scale, model, str(self._workspace),
                                 str(task.scorer_dir), str(SCORELIB.parent))
        try:
            await sb.start()
            res = await sb.exec(" ".join(shlex.quote(a) for a in argv),
                                timeout_s=scale.score_timeout_s, output_cap=SCORER_OUTPUT_CAP)
        except SandboxError as exc:
            return {"value": None, "error": f"scoring sandbox: {exc}"}
        finally:
            with contextlib.suppress(Exception):
                await sb.stop()
        try:
            return parse_score_output(res.output)
        except ScoreOutputError as exc:
            return {"value": None, "error": f"{exc} (scorer exit {res.exit_code}): "
                                            f"{strip_escapes(res.output)[-500:]}"}
