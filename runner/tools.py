"""The agent's tools, as in the MLRB scaffold: bash, run a Python file, write / read / edit a
file, a scratchpad for notes, and submit.

Tool calls come from an LLM, so they are untrusted: arguments are validated with pydantic
and a bad call becomes a tool error the agent sees, never an exception. Every tool that
touches files does so inside the sandbox (as the sandbox user), never through the host's
view of the workspace, so a symlink planted by the agent cannot reach the host.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runner.agents.base import ToolCall, ToolResult
from runner.jobs import follow_job, run_job
from runner.sandbox import ExecResult, OutputCallback, Sandbox

OUTPUT_CAP = 16 * 1024  # what a tool result may carry back to the model
READ_CAP = 64 * 1024
WRITE_CHUNK = 48 * 1024  # base64 bytes per exec argument


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BashArgs(_Args):
    command: str = Field(min_length=1, max_length=100_000)
    timeout_s: float = Field(default=600, gt=0, le=24 * 3600)


class RunPythonArgs(_Args):
    path: str = Field(min_length=1, max_length=1024)
    args: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=3600, gt=0, le=24 * 3600)


class WriteFileArgs(_Args):
    path: str = Field(min_length=1, max_length=1024)
    content: str = Field(max_length=4 * 1024 * 1024)


class ReadFileArgs(_Args):
    path: str = Field(min_length=1, max_length=1024)
    max_bytes: int = Field(default=READ_CAP, gt=0, le=READ_CAP)


class EditFileArgs(_Args):
    path: str = Field(min_length=1, max_length=1024)
    old: str = Field(min_length=1)
    new: str


class ScratchpadArgs(_Args):
    note: str = Field(min_length=1, max_length=20_000)


class SubmitArgs(_Args):
    path: str = Field(min_length=1, max_length=1024, description="the saved model folder")
    summary: str = Field(default="", max_length=20_000)


ARGS: dict[str, type[_Args]] = {
    "bash": BashArgs,
    "run_python": RunPythonArgs,
    "write_file": WriteFileArgs,
    "read_file": ReadFileArgs,
    "edit_file": EditFileArgs,
    "scratchpad": ScratchpadArgs,
    "submit": SubmitArgs,
}

_DESCRIPTIONS = {
    "bash": "Run a bash command in the sandbox (cwd /workspace). Output is capped; use a "
            "timeout for long jobs. Returns stdout+stderr and the exit code.",
    "run_python": "Run a Python file in the sandbox with optional arguments.",
    "write_file": "Create or overwrite a file in the sandbox with the given content.",
    "read_file": "Read a text file from the sandbox (capped).",
    "edit_file": "Replace exactly one occurrence of `old` with `new` in a file.",
    "scratchpad": "Write a note to yourself; notes are kept across the run.",
    "submit": "Submit your final model (a folder saved with save_pretrained) and a short "
              "summary. The run ends and the model is scored by the benchmark's scorer.",
}


def _schema(model: type[_Args]) -> dict[str, Any]:
    s = model.model_json_schema()
    s.pop("title", None)
    for prop in s.get("properties", {}).values():
        prop.pop("title", None)
    return s


TOOL_SPECS: list[dict[str, Any]] = [
    {"name": name, "description": _DESCRIPTIONS[name], "parameters": _schema(model)}
    for name, model in ARGS.items()
]


class ToolArgsError(ValueError):
    pass


JOB_TOOLS = ("bash", "run_python")  # tools whose command runs as a job (runner.jobs)
_JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def job_id_for(call_id: str) -> str:
    """The job a call's command runs as: the call's id where it is a safe file name."""
    if _JOB_ID.match(call_id) and call_id not in (".", ".."):
        return call_id
    return "j" + hashlib.sha256(call_id.encode()).hexdigest()[:24]


# The tools whose accepted call ends the run with a submission: (its path field, its summary field).
SUBMITTING = {"submit": ("path", "summary"), "return_fn": ("model_path", "submission")}


def submission_of(call: ToolCall) -> tuple[str, str] | None:
    """(path, summary) that a submitting tool's call hands in; None for any other tool."""
    fields = SUBMITTING.get(call.name)
    if fields is None:
        return None
    return str(call.args.get(fields[0], "")), str(call.args.get(fields[1], ""))


def validate(call: ToolCall, table: Mapping[str, type[_Args]] = ARGS) -> _Args:
    """The call's arguments as the model of its tool in `table` (the scaffold's tools)."""
    model = table.get(call.name)
    if model is None:
        raise ToolArgsError(f"unknown tool {call.name!r}; available tools: {', '.join(table)}")
    if "__error__" in call.args:  # arguments that did not decode; the agent says why
        raise ToolArgsError(f"invalid arguments for {call.name}: {call.args['__error__']}")
    try:
        return model.model_validate(call.args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or '(arguments)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise ToolArgsError(f"invalid arguments for {call.name}: {problems}") from None


@dataclass
class ToolBox:
    """Runs validated tool calls in one sandbox: the project's own scaffold's tools (a subclass
    runs another scaffold's: its `arg_models`, `specs` and `job_tools` agree)."""

    job_tools: ClassVar[tuple[str, ...]] = JOB_TOOLS

    sandbox: Sandbox
    on_output: OutputCallback | None = None
    on_offset: Callable[[str, int], None] | None = None  # (job id, bytes of its output seen)
    keep_jobs: bool = False  # a cancelled command keeps running (the runner is detaching)
    notes: list[str] = field(default_factory=list)
    submission: SubmitArgs | None = None
    output_cap: int = OUTPUT_CAP
    clock: Callable[[], float] = time.monotonic

    def specs(self) -> list[dict[str, Any]]:
        """The JSON-schema specs of the tools this box runs, as the agent is offered them."""
        return TOOL_SPECS

    def arg_models(self) -> Mapping[str, type[_Args]]:
        """Each tool's argument model, by name: a call to any other tool is refused."""
        return ARGS

    async def execute(self, call: ToolCall) -> ToolResult:
        start = self.clock()
        try:
            args = validate(call, self.arg_models())
        except ToolArgsError as exc:
            return ToolResult(call.id, call.name, ok=False, output=str(exc),
                              meta={"error": "invalid_call"})
        handler = getattr(self, f"_{call.name}")
        result: ToolResult = await handler(call, args)
        return ToolResult(result.call_id, result.name, result.ok, result.output,
                          result.exit_code, round(self.clock() - start, 3), result.meta)

    def _offset_cb(self, job: str) -> Callable[[int], None] | None:
        cb = self.on_offset
        return None if cb is None else (lambda n: cb(job, n))

    async def _run(self, call: ToolCall, command: str, timeout_s: float) -> ToolResult:
        job = job_id_for(call.id)
        res = await run_job(self.sandbox, job, command, timeout_s=timeout_s,
                            output_cap=self.output_cap, on_output=self.on_output,
                            on_offset=self._offset_cb(job), keep_on_cancel=lambda: self.keep_jobs)
        return self._result(call, res, timeout_s)

    def job_started(self, call: ToolCall) -> bool:
        """Whether this call's command was started (by this runner or an earlier one)."""
        from runner.jobs import JobFiles

        return call.name in self.job_tools and JobFiles(self.sandbox.workspace_host, job_id_for(call.id)).exists()

    async def resume(self, call: ToolCall, skip: int) -> ToolResult:
        """Follow a call's command that an earlier runner started, to its end; the output
        before byte `skip` was already handed on."""
        start = self.clock()
        args = validate(call, self.arg_models())
        timeout_s = float(getattr(args, "timeout_s", 600))
        job = job_id_for(call.id)
        res = await follow_job(self.sandbox, job, timeout_s=timeout_s, output_cap=self.output_cap,
                               on_output=self.on_output, on_offset=self._offset_cb(job), skip=skip,
                               keep_on_cancel=lambda: self.keep_jobs)
        r = self._result(call, res, timeout_s)
        return ToolResult(r.call_id, r.name, r.ok, r.output, r.exit_code,
                          round(max(res.duration_s, self.clock() - start), 3), r.meta)

    def _result(self, call: ToolCall, res: ExecResult, timeout_s: float) -> ToolResult:
        out = res.output
        if res.timed_out:
            out += f"\n[timed out after {timeout_s:g} s]"
        return ToolResult(call.id, call.name, ok=res.exit_code == 0, output=out,
                          exit_code=res.exit_code,
                          meta={"truncated": res.truncated, "timed_out": res.timed_out})

    async def _bash(self, call: ToolCall, a: BashArgs) -> ToolResult:
        return await self._run(call, a.command, a.timeout_s)

    async def _run_python(self, call: ToolCall, a: RunPythonArgs) -> ToolResult:
        cmd = " ".join(shlex.quote(x) for x in ["python3", a.path, *a.args])
        return await self._run(call, cmd, a.timeout_s)

    async def _write_file(self, call: ToolCall, a: WriteFileArgs) -> ToolResult:
        ok, msg = await self.write_text(a.path, a.content)
        return ToolResult(call.id, call.name, ok=ok, output=msg)

    async def write_text(self, path: str, content: str) -> tuple[bool, str]:
        data = base64.b64encode(content.encode()).decode()
        q = shlex.quote(path)
        first = True
        for i in range(0, max(len(data), 1), WRITE_CHUNK):
            chunk = data[i:i + WRITE_CHUNK]
            redirect = ">" if first else ">>"
            prefix = f'mkdir -p "$(dirname {q})" && ' if first else ""
            res = await self.sandbox.exec(
                f"{prefix}printf %s {shlex.quote(chunk)} | base64 -d {redirect} {q}",
                timeout_s=60, output_cap=4096)
            first = False
            if res.exit_code != 0:
                return False, f"cannot write {path}: {res.output.strip()[-500:]}"
        return True, f"wrote {len(content.encode())} bytes to {path}"

    async def read_text(self, path: str, max_bytes: int = READ_CAP) -> tuple[bool, str]:
        q = shlex.quote(path)
        res = await self.sandbox.exec(
            f"test -f {q} || {{ echo 'no such file: '{q} >&2; exit 2; }}; "
            f"head -c {max_bytes} {q} | base64 -w0; echo; wc -c < {q}",
            timeout_s=60, output_cap=max_bytes * 2 + 4096)
        if res.exit_code != 0:
            return False, res.output.strip()[-500:] or f"cannot read {path}"
        # the first line is the base64 (empty for an empty file), the last the size
        encoded, _, rest = res.output.partition("\n")
        try:
            text = base64.b64decode(encoded.strip()).decode("utf-8", errors="replace")
            size = int(rest.strip().split("\n")[-1])
        except (ValueError, IndexError):
            return False, f"cannot read {path}: unexpected output"
        if size > max_bytes:
            text += f"\n[... file is {size} bytes; showing the first {max_bytes}]"
        return True, text

    async def _read_file(self, call: ToolCall, a: ReadFileArgs) -> ToolResult:
        ok, text = await self.read_text(a.path, a.max_bytes)
        return ToolResult(call.id, call.name, ok=ok, output=text)

    async def _edit_file(self, call: ToolCall, a: EditFileArgs) -> ToolResult:
        ok, text = await self.read_text(a.path, 4 * 1024 * 1024)
        if not ok:
            return ToolResult(call.id, call.name, ok=False, output=text)
        n = text.count(a.old)
        if n != 1:
            return ToolResult(call.id, call.name, ok=False,
                              output=f"`old` occurs {n} times in {a.path}; it must occur exactly once")
        ok, msg = await self.write_text(a.path, text.replace(a.old, a.new, 1))
        return ToolResult(call.id, call.name, ok=ok, output=msg if not ok else f"edited {a.path}")

    async def _scratchpad(self, call: ToolCall, a: ScratchpadArgs) -> ToolResult:
        self.notes.append(a.note)
        return ToolResult(call.id, call.name, ok=True, output=f"noted ({len(self.notes)} notes)")

    async def _submit(self, call: ToolCall, a: SubmitArgs) -> ToolResult:
        q = shlex.quote(a.path)
        res = await self.sandbox.exec(f"test -e {q}", timeout_s=30, output_cap=1024)
        if res.exit_code != 0:
            return ToolResult(call.id, call.name, ok=False,
                              output=f"nothing at {a.path}: save your model there first")
        self.submission = a
        return ToolResult(call.id, call.name, ok=True, output=f"submitted {a.path}",
                          meta={"submitted": True})
