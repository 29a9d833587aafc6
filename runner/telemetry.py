"""Telemetry: a container's Docker stats stream (StatsStream) and a run's bounded recent
history of resource and GPU samples (TelemetryWindow).

A one-shot `container.stats(stream=False)` takes one to two seconds (the engine waits for two
readings to compute CPU); the stream gives one sample a second for free, so one thread per
container follows it and keeps only the latest sample for the supervisor to read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Sample = dict[str, float | int | None]
STALE_AFTER_S = 5.0  # a streamed sample older than this is not "the latest" any more


class StatsStream:
    """Follows `container.stats(stream=True, decode=True)` in a daemon thread.

    Only the latest sample is kept. The thread ends by itself when the container goes away
    (the engine closes the stream); a paused container keeps streaming with CPU 0.
    """

    def __init__(self, container: Any, convert: Callable[[dict[str, Any]], Sample],
                 name: str = "") -> None:
        self._container = container
        self._convert = convert
        self.name = name or str(getattr(container, "name", "container"))
        self._cond = threading.Condition()
        self._latest: Sample | None = None
        self._latest_at = 0.0
        self._count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def start(self) -> StatsStream:
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name=f"stats-{self.name}",
                                            daemon=True)
            self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def count(self) -> int:
        return self._count

    def latest(self, max_age_s: float = STALE_AFTER_S) -> Sample | None:
        """The newest sample, or None when there is none that recent."""
        with self._cond:
            if self._latest is None or time.monotonic() - self._latest_at > max_age_s:
                return None
            return dict(self._latest)

    def wait(self, count: int, timeout_s: float) -> bool:
        """Block until `count` samples have arrived in all (or the stream ended); True if they did."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._count < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self._thread is not None and not self._thread.is_alive()):
                    return self._count >= count
                self._cond.wait(min(left, 0.5))
            return True

    def stop(self, join_s: float = 0.0) -> None:
        """Ask the thread to end. The engine sends a sample a second (paused or not) and ends
        the stream when the container is removed, so the thread leaves within about a second."""
        self._stop.set()
        if join_s and self._thread is not None:
            self._thread.join(join_s)

    def _follow(self) -> None:
        try:
            for raw in self._container.stats(stream=True, decode=True):
                if self._stop.is_set():
                    break
                if not isinstance(raw, dict):
                    continue
                try:
                    sample = self._convert(raw)
                except Exception as exc:  # noqa: BLE001 - one odd sample is skipped
                    log.debug("odd stats sample from %s: %s", self.name, exc)
                    continue
                with self._cond:
                    self._latest, self._latest_at = sample, time.monotonic()
                    self._count += 1
                    self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - the container went away, or stop() closed us
            if not self._stop.is_set():
                self.error = f"{exc.__class__.__name__}: {exc}"[:300]
        finally:
            with self._cond:
                self._cond.notify_all()


class TelemetryWindow:
    """The recent samples of one run, per kind ("resource", "gpu"): at most `maxlen` each and
    none older than `window_s`, so a week-long run costs the same memory as a short one.
    History beyond the window lives in SQLite."""

    def __init__(self, window_s: float = 600.0, maxlen: int = 600) -> None:
        self.window_s = window_s
        self.maxlen = maxlen
        self._series: dict[str, deque[tuple[float, dict[str, Any]]]] = {}

    def add(self, kind: str, sample: dict[str, Any], ts: float | None = None) -> None:
        series = self._series.get(kind)
        if series is None:
            series = self._series[kind] = deque(maxlen=self.maxlen)
        now = time.time() if ts is None else ts
        series.append((now, sample))
        cutoff = now - self.window_s
        while series and series[0][0] < cutoff:
            series.popleft()

    def latest(self, kind: str) -> dict[str, Any] | None:
        series = self._series.get(kind)
        return series[-1][1] if series else None

    def items(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return list(self._series.get(kind, ()))

    def __len__(self) -> int:
        return sum(len(s) for s in self._series.values())


__all__ = ["STALE_AFTER_S", "StatsStream", "TelemetryWindow"]
