"""Per-run sequence tracking on a subscriber: the highest contiguous `seq`, and the gaps.

`seq` is gapless per run, so an event above contiguous+1 means something was missed (or
is arriving out of order). The owner's word that a run reached some seq (`expect`) opens a
gap too, so a lost tail is noticed although nothing after it arrives. After a short grace a
gap is due for a repair request; while it stays open it is asked for again with a backoff
that doubles. Memory is bounded: each run
keeps at most `max_ranges` ranges of seqs seen above its contiguous point, and at most
`max_runs` runs are tracked (the least recently seen is forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

GRACE = 0.5  # seconds an out-of-order event may be late before its gap counts
RETRY_MIN, RETRY_MAX = 2.0, 30.0
MAX_RANGES = 64
MAX_RUNS = 10_000


@dataclass
class RunSeq:
    """One run: every seq up to `contiguous` was seen, and the disjoint sorted `ahead` ranges."""

    contiguous: int = 0
    ahead: list[tuple[int, int]] = field(default_factory=list)  # inclusive (first, last)
    expected: int = 0  # the owner said the run reached this seq
    gap_since: float | None = None  # when the current first hole was first noticed
    next_try: float = 0.0
    backoff: float = RETRY_MIN
    requests: int = 0

    def hole(self) -> tuple[int, int] | None:
        """The first missing range, or None when nothing is known to be missing."""
        if self.ahead:
            return self.contiguous + 1, self.ahead[0][0] - 1
        if self.expected > self.contiguous:
            return self.contiguous + 1, self.expected
        return None

    def add(self, seq: int, max_ranges: int) -> bool:
        """Record one seq; True when `contiguous` moved."""
        if seq <= self.contiguous or any(a <= seq <= b for a, b in self.ahead):
            return False
        if seq == self.contiguous + 1:
            self.contiguous = seq
            while self.ahead and self.ahead[0][0] <= self.contiguous + 1:
                self.contiguous = max(self.contiguous, self.ahead.pop(0)[1])
            return True
        self._insert(seq)
        del self.ahead[max_ranges:]  # forgotten ranges are asked for again: duplicates are no-ops
        return False

    def _insert(self, seq: int) -> None:
        ranges = self.ahead
        i = 0
        while i < len(ranges) and ranges[i][1] < seq - 1:
            i += 1
        if i < len(ranges) and ranges[i][0] <= seq + 1:
            first, last = min(ranges[i][0], seq), max(ranges[i][1], seq)
            ranges[i] = (first, last)
            if i + 1 < len(ranges) and ranges[i + 1][0] <= last + 1:
                ranges[i] = (first, ranges.pop(i + 1)[1])
        else:
            ranges.insert(i, (seq, seq))


class SeqTracker:
    """Tracks many runs; says which gaps are due for a repair request."""

    def __init__(self, *, grace: float = GRACE, retry_min: float = RETRY_MIN,
                 retry_max: float = RETRY_MAX, max_ranges: int = MAX_RANGES,
                 max_runs: int = MAX_RUNS, from_start: bool = True) -> None:
        self.grace, self.retry_min, self.retry_max = grace, retry_min, retry_max
        self.max_ranges, self.max_runs = max_ranges, max_runs
        # False: a run first seen mid-way starts there (a viewer that backfills elsewhere)
        self.from_start = from_start
        self._runs: OrderedDict[str, RunSeq] = OrderedDict()
        self._open: dict[str, None] = {}  # runs with a hole, kept as they change: `gaps` is cheap

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, run: str) -> RunSeq | None:
        return self._runs.get(run)

    def seed(self, run: str, contiguous: int) -> None:
        """Start a run at `contiguous` (e.g. what a local copy already holds)."""
        st = self._run(run, contiguous + 1)
        if contiguous > st.contiguous:
            st.contiguous = contiguous
            st.ahead = [(a, b) for a, b in st.ahead if b > contiguous]
            if st.ahead and st.ahead[0][0] <= contiguous + 1:
                st.contiguous = st.ahead.pop(0)[1]
            if st.hole() is None:  # a hole still open keeps its timers
                st.gap_since = None
                self._open.pop(run, None)

    def observe(self, run: str, seq: int, now: float) -> None:
        st = self._run(run, seq)
        self._timers(run, st, moved=st.add(seq, self.max_ranges), now=now)

    def expect(self, run: str, last_seq: int, now: float) -> None:
        """The owner says the run reached `last_seq`: a missed tail is a gap too.

        A run this tracker has not seen is started only when tracking from the start (a
        viewer that joined elsewhere has nothing to repair)."""
        if run not in self._runs and not self.from_start:
            return
        st = self._run(run, last_seq + 1)
        if last_seq <= st.expected:
            return
        fresh = st.hole() is None
        st.expected = last_seq
        self._timers(run, st, moved=fresh, now=now)

    def _timers(self, run: str, st: RunSeq, *, moved: bool, now: float) -> None:
        if st.hole() is None:
            st.gap_since = None
            self._open.pop(run, None)
        elif moved or st.gap_since is None:
            # a new first hole: give late events their grace again, from the shortest backoff
            st.gap_since = now
            st.next_try = now + self.grace
            st.backoff = self.retry_min
            self._open[run] = None

    def due(self, now: float, limit: int = 100) -> list[tuple[str, int, int]]:
        """Gaps to ask for now, as (run, from_seq, to_seq); each asked is rescheduled."""
        out: list[tuple[str, int, int]] = []
        for run in self._open:
            st = self._runs[run]
            hole = st.hole()
            if hole is None or st.gap_since is None or now < st.next_try:
                continue
            out.append((run, *hole))
            st.requests += 1
            st.next_try = now + st.backoff
            st.backoff = min(st.backoff * 2, self.retry_max)
            if len(out) >= limit:
                break
        return out

    @property
    def gaps(self) -> list[str]:
        """Runs with an open gap."""
        return list(self._open)

    def _run(self, run: str, seq: int) -> RunSeq:
        st = self._runs.get(run)
        if st is None:
            st = self._runs[run] = RunSeq(contiguous=0 if self.from_start else seq - 1)
            while len(self._runs) > self.max_runs:
                self._open.pop(self._runs.popitem(last=False)[0], None)
        else:
            self._runs.move_to_end(run)
        return st


__all__ = ["RunSeq", "SeqTracker"]
