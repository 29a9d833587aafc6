"""A sandbox's output as events: stdout and stderr in chunks merged by stream, and training
metrics, from Trainer log lines in the output and from the metrics file.

Output arrives in many small pieces; it is buffered and flushed every `OUTPUT_FLUSH_S`, or
sooner once `OUTPUT_CHUNK` characters are waiting, so a chatty command makes few events.
Metrics from both sources share one step count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from runner.escapes import overwrite_line, strip_escapes
from runner.metrics import MetricsTail, parse_trainer_line
from runner.sandbox import METRICS_FILE

OUTPUT_FLUSH_S = 0.1
OUTPUT_CHUNK = 8 * 1024
MAX_EVENT_TEXT = 200_000
MAX_PARTIAL_LINE = 4096
METRICS_POLL_S = 0.5

Emit = Callable[[str, dict[str, Any]], Awaitable[Any]]
Spawn = Callable[[Awaitable[Any]], None]


class SandboxOutput:
    def __init__(self, workspace: Path, emit: Emit, spawn: Spawn) -> None:
        self._workspace = workspace
        self._emit = emit
        self._spawn = spawn  # work started from a synchronous output callback
        self._buf: list[tuple[str, str]] = []
        self._size = 0
        self._line = ""  # the unfinished last line, for Trainer log lines split across pieces
        self._step = 0
        self._tail: MetricsTail | None = None
        self._draining: asyncio.Future[int] | None = None  # the follower's batch in flight
        self._job: tuple[str, int] | None = None  # (job id, bytes of its output buffered so far)
        self.metrics_offset = 0  # where the metrics file is followed from (an adopted run's)

    def add(self, stream: str, text: str) -> None:
        """One piece of a command's output, as the sandbox delivers it."""
        # carriage returns stay: a progress bar's redraws are the console's to fold
        text = strip_escapes(text, keep_cr=True)
        if not text:
            return
        self._buf.append((stream, text))
        self._size += len(text)
        # metrics printed as Trainer log dicts
        lines = (self._line + text).split("\n")
        self._line = lines.pop()[-MAX_PARTIAL_LINE:]
        for line in lines:
            parsed = parse_trainer_line(overwrite_line(line))
            if parsed is not None:
                self._spawn(self.emit_metric(parsed, "stdout"))
        if self._size >= OUTPUT_CHUNK:
            self._spawn(self.flush())

    def job_offset(self, job: str, offset: int) -> None:
        """How far into a job's output file the pieces added so far reach."""
        self._job = (job, offset)

    def take_chunks(self) -> list[tuple[str, str]]:
        """The buffered output as (stream, text) chunks: consecutive pieces of one stream
        merged until a chunk holds `OUTPUT_CHUNK` characters; the buffer is emptied."""
        buf, self._buf, self._size = self._buf, [], 0
        merged: list[tuple[str, str]] = []
        for stream, text in buf:
            if merged and merged[-1][0] == stream and len(merged[-1][1]) < OUTPUT_CHUNK:
                merged[-1] = (stream, merged[-1][1] + text)
            else:
                merged.append((stream, text))
        return merged

    async def flush(self) -> None:
        chunks = self.take_chunks()
        job, self._job = self._job, None
        for i, (stream, text) in enumerate(chunks):
            data: dict[str, Any] = {"stream": stream, "text": text[:MAX_EVENT_TEXT]}
            if job is not None and i == len(chunks) - 1:
                # the last chunk says how far the job's output file is journaled, so a
                # runner that adopts the run goes on from there
                data["job"], data["offset"] = job
            await self._emit("sandbox.output", data)

    def resume(self, metric_step: int, metrics_offset: int) -> None:
        """Go on where an earlier runner's journal ends: the last metric step, and the
        metrics file's offset."""
        self._step = metric_step
        self.metrics_offset = metrics_offset

    def metric(self, parsed: dict[str, Any], source: str) -> dict[str, Any]:
        """A `metric` event's data; a metric without a step takes the one after the last."""
        step = parsed["step"]
        if step is None:
            self._step += 1
            step = self._step
        else:
            self._step = step
        data = {"step": step, "values": parsed["values"], "source": source}
        if parsed.get("offset") is not None:
            data["offset"] = parsed["offset"]  # where the metrics file's next line starts
        return data

    async def emit_metric(self, parsed: dict[str, Any], source: str) -> None:
        await self._emit("metric", self.metric(parsed, source))

    async def flush_every(self) -> None:
        """Flush on a short period, for as long as the run lives."""
        while True:
            await asyncio.sleep(OUTPUT_FLUSH_S)
            await self.flush()

    async def follow_metrics(self) -> None:
        """Follow the metrics file the in-sandbox helper appends to, for as long as the run lives."""
        while True:
            # a batch read is emitted whole: cancelling the follower mid-read would lose the
            # lines the read moved past, so the batch finishes and read_last_metrics waits for it
            self._draining = asyncio.ensure_future(self._drain_once())
            await asyncio.shield(self._draining)
            await asyncio.sleep(METRICS_POLL_S)

    async def _drain_once(self) -> int:
        batch = await asyncio.to_thread(self._metrics_tail().read)
        for parsed in batch:
            await self.emit_metric(parsed, "file")
        return len(batch)

    def _metrics_tail(self) -> MetricsTail:
        if self._tail is None:
            self._tail = MetricsTail(self._workspace, METRICS_FILE)
            self._tail.offset = self.metrics_offset
        return self._tail

    async def read_last_metrics(self) -> None:
        """Metrics written in the run's last moments, after the follower stopped (or before
        it first read: an adopted run whose command ended while no runner watched)."""
        if self._draining is not None:
            await asyncio.wait([self._draining])  # the follower's last batch, emitted whole first
            if not self._draining.cancelled() and self._draining.exception() is not None:
                raise self._draining.exception()  # type: ignore[misc]
        while await self._drain_once():
            pass
