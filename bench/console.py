"""Console benchmark: the real app, headless, under a live fleet, and a replay of a huge run.

    python bench/console.py [--runs 200] [--rate 10] [--seconds 20] [--replay-events 1000000]
                            [--replay-only | --skip-replay] [--replay-db PATH]

Live: `--runs` runs each send `--rate` events/s plus a 1 Hz GPU sample through LiveSource's
feed. Every event is stamped when the console receives it; the latency is measured when the
dashboard's cell update has been applied and when the screen has refreshed after it (the
repaint is throttled to `repaint_hz`). Key-press-to-repaint is timed over cursor moves.
Replay: a run of `--replay-events` events is written with Journal in a temp dir, then opened
and sought with ReplayController. Figures only; targets are printed next to them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual import events  # noqa: E402

from mlrb_tui.app import MLRBApp  # noqa: E402
from mlrb_tui.replay import ReplayController  # noqa: E402
from mlrb_tui.source import LiveSource  # noqa: E402
from runner.control import ControlCommand  # noqa: E402
from runner.events import Event, EventFactory  # noqa: E402
from runner.journal import Journal, JournalReader  # noqa: E402


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Fleet:
    """`runs` runs at `rate` events/s each, plus a GPU sample a second each."""

    def __init__(self, runs: int, rate: float, seconds: float, tick: float = 0.02) -> None:
        self.factories = [EventFactory(f"bench-{i:03d}") for i in range(runs)]
        self.rate, self.seconds, self.tick = rate, seconds, tick
        self.arrivals: dict[str, float] = {}  # run -> arrival of its oldest undrawn event
        self.sent = 0
        self.done = asyncio.Event()

    def created(self) -> list[Event]:
        return [f.make("run.created", {"task": "mini_pile", "agent": "scripted",
                                       "limits": {"time_s": 3600}}) for f in self.factories]

    def _event(self, f: EventFactory, i: int, step: int) -> Event:
        if i % 3 == 0:
            return f.make("metric", {"step": step, "values": {"loss": random.random() * 3}})
        if i % 3 == 1:
            return f.make("sandbox.output", {"stream": "stdout", "text": f"step {step} ok\n"})
        return f.make("resource", {"cpu_pct": random.random() * 400,
                                   "mem_bytes": random.randint(1, 8) << 30,
                                   "mem_limit": 16 << 30, "cpu_limit": 4})

    async def feed(self) -> AsyncIterator[list[Event]]:
        """Each run sends at random times (a Poisson stream at `rate`), so arrivals are not in
        step with the repaints; the bus hands them over in small batches every `tick`."""
        yield self.created()
        yield [f.make("run.started", {"elapsed_s": 0.0}) for f in self.factories]
        loop = asyncio.get_running_loop()
        start = loop.time()
        due = [start + random.expovariate(self.rate) for _ in self.factories]
        gpu_due = [start + random.random() for _ in self.factories]
        counts = [0] * len(self.factories)
        while loop.time() - start < self.seconds:
            await asyncio.sleep(self.tick)
            now_loop = loop.time()
            batch: list[Event] = []
            for n, f in enumerate(self.factories):
                while due[n] <= now_loop:
                    counts[n] += 1
                    batch.append(self._event(f, counts[n], counts[n]))
                    due[n] += random.expovariate(self.rate)
                if gpu_due[n] <= now_loop:  # 1 Hz, each run at its own phase
                    gpu_due[n] += 1.0
                    batch.append(f.make("gpu", {"device": 0, "util": random.random() * 100,
                                                "mem_used": 30 << 30, "mem_total": 80 << 30}))
            now = time.perf_counter()
            for ev in batch:
                self.arrivals.setdefault(ev.run, now)
            self.sent += len(batch)
            if batch:
                yield batch
        self.done.set()
        await asyncio.Event().wait()  # a bus stays open after the burst


async def live(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    fleet = Fleet(args.runs, args.rate, args.seconds)
    app = MLRBApp(tmp / "live.db", None, operator="bench", repaint_hz=args.repaint_hz)

    async def no_send(cmd: ControlCommand) -> None:
        return None

    app.use_source(LiveSource(tmp / "live.db", None, feed=fleet.feed().__aiter__(), send=no_send))
    applied: list[float] = []
    painted: list[float] = []
    original = app._tick

    offscreen = [0]

    def timed_tick() -> None:
        changed = {r: fleet.arrivals.pop(r) for r in list(app.fleet.changed) if r in fleet.arrivals}
        original()
        done = time.perf_counter()
        # a changed row out of the viewport is not drawn (it is drawn when it scrolls into
        # view), so latency is measured over the rows the tick actually brought on screen
        drawn = set(app.dashboard.table.drawn) if app.dashboard is not None else set()
        waiting = {r: t for r, t in changed.items() if r in drawn}
        offscreen[0] += len(changed) - len(waiting)
        applied.extend(done - t for t in waiting.values())

        def on_screen() -> None:
            shown = time.perf_counter()
            painted.extend(shown - t for t in waiting.values())

        if waiting:
            app.call_after_refresh(on_screen)

    app._tick = timed_tick  # type: ignore[method-assign]
    keys: list[float] = []
    async with app.run_test(size=(200, 60)) as pilot:
        while app.dashboard is None or app.dashboard.table.row_count < args.runs:
            await pilot.pause(0.05)
        applied.clear()
        painted.clear()
        offscreen[0] = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        table = app.dashboard.table
        painted_after_key = asyncio.Event()
        # the cursor moved: the refresh that follows is the one that shows it
        table.watch(table, "cursor_row",
                    lambda: app.call_after_refresh(painted_after_key.set), init=False)
        while not fleet.done.is_set():
            await asyncio.sleep(0.25 + random.random() / 4)  # not in step with the repaints
            for key in ("down", "up"):
                painted_after_key.clear()
                t = time.perf_counter()
                # as a terminal sends it: Pilot.press also waits for the app to go idle
                event = events.Key(key, None)
                event.set_sender(app)
                app._driver.send_message(event)  # type: ignore[union-attr]
                await painted_after_key.wait()
                keys.append(time.perf_counter() - t)
        cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        sent = fleet.sent
    return {"events": sent, "applied_p50": pct(applied, 0.5), "applied_p99": pct(applied, 0.99),
            "screen_p50": pct(painted, 0.5), "screen_p99": pct(painted, 0.99),
            "key_p50": pct(keys, 0.5), "key_p99": pct(keys, 0.99), "key_n": len(keys),
            "cpu": cpu, "peak_rss": peak_rss_mb(), "drawn_n": len(applied),
            "offscreen_n": offscreen[0]}


def write_big_run(path: Path, n: int) -> str:
    run = "bench-replay"
    f = EventFactory(run)
    journal = Journal(path)
    t = 1_767_261_600.0
    kinds = 0
    batch: list[Event] = [f.make("run.created", {"task": "mini_pile", "agent": "scripted",
                                                  "limits": {"time_s": 86400}}, ts=t),
                          f.make("run.started", {"elapsed_s": 0.0}, ts=t)]
    for i in range(n - 2):
        ts = t + i * 0.05
        r = i % 100
        if r < 70:
            batch.append(f.make("sandbox.output", {"stream": "stdout", "text": f"line {i}\n"}, ts=ts))
        elif r < 85:
            batch.append(f.make("metric", {"step": i, "values": {"train/loss": 1.0 / (1 + i),
                                                                 "eval/loss": 1.2 / (1 + i)}}, ts=ts))
        elif r < 95:
            batch.append(f.make("tool.call", {"id": f"c{i}", "name": "bash",
                                              "args": {"command": f"echo {i}"}}, ts=ts))
        elif r < 99:
            batch.append(f.make("tool.result", {"id": f"c{i}", "name": "bash", "ok": True,
                                                "output": "ok", "exit_code": 0}, ts=ts))
        else:
            kinds += 1
            if kinds % 2:
                batch.append(f.make("operator.message", {"operator": "bench", "reason": "check",
                                                         "text": "hi"}, ts=ts))
            else:
                batch.append(f.make("agent.error", {"error": "x", "detail": "y"}, ts=ts))
        if len(batch) >= 20000:
            journal.write_sync(batch)
            batch = []
    journal.write_sync(batch)
    journal.close()
    return run


def replay(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    path = Path(args.replay_db) if args.replay_db else tmp / "replay.db"
    t = time.perf_counter()
    if path.exists():  # a kept journal from an earlier run of the benchmark: iterate faster
        run = "bench-replay"
        if JournalReader(path).max_seq(run) != args.replay_events:
            raise SystemExit(f"{path} does not hold a {args.replay_events:,}-event run")
    else:
        run = write_big_run(path, args.replay_events)
    written = time.perf_counter() - t
    gc.collect()
    rss0 = rss_mb()
    t = time.perf_counter()
    reader = JournalReader(path)
    ctl = ReplayController(reader, run, speed=1000)
    ctl.advance(0.25)  # the first frame
    opened = time.perf_counter() - t
    seeks = []
    rnd = random.Random(7)
    for frac in (0.5, 0.1, 0.9, 0.33, 0.77, 0.999, 0.01, *(rnd.random() for _ in range(43))):
        t = time.perf_counter()
        ctl.seek_fraction(frac)
        seeks.append(time.perf_counter() - t)
    backs = []
    for _ in range(10):
        t = time.perf_counter()
        ctl.step_back()
        backs.append(time.perf_counter() - t)
    t = time.perf_counter()
    ctl.seek_seq(1)
    ctl.jump_next("intervention")
    jump = time.perf_counter() - t
    mem = rss_mb() - rss0
    reader.close()
    return {"events": args.replay_events, "write_s": written, "open": opened,
            "seek_p50": pct(seeks, 0.5), "seek_p99": pct(seeks, 0.99), "seek_max": max(seeks),
            "seek_n": len(seeks), "back_max": max(backs), "jump": jump, "mem_delta": mem,
            "rss": rss_mb()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--rate", type=float, default=10.0, help="events/s per run")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--repaint-hz", type=float, default=8.0)
    p.add_argument("--replay-events", type=int, default=1_000_000)
    p.add_argument("--skip-live", action="store_true")
    p.add_argument("--skip-replay", action="store_true")
    p.add_argument("--replay-only", action="store_true", help="the replay part alone")
    p.add_argument("--replay-db", help="keep the huge run's journal here and reuse it next time")
    args = p.parse_args()
    ms = 1000.0
    with tempfile.TemporaryDirectory(prefix="mlrb-bench-") as d:
        tmp = Path(d)
        if not args.skip_replay:
            r = replay(args, tmp)
            print(f"replay of {r['events']:,} events (written in {r['write_s']:.1f} s)")
            print(f"  open + first frame   {r['open'] * ms:8.1f} ms   (target < 1000 ms)")
            print(f"  seek p50 / p99 / max {r['seek_p50'] * ms:8.1f} / {r['seek_p99'] * ms:.1f} / "
                  f"{r['seek_max'] * ms:.1f} ms over {r['seek_n']} seeks   (target < 100 ms)")
            print(f"  step back max        {r['back_max'] * ms:8.1f} ms")
            print(f"  jump to intervention {r['jump'] * ms:8.1f} ms")
            print(f"  memory: +{r['mem_delta']:.1f} MB for the replay, RSS {r['rss']:.0f} MB"
                  "   (target < 300 MB)")
        if not (args.skip_live or args.replay_only):
            r2 = asyncio.run(live(args, tmp))
            print(f"live: {args.runs} runs x {args.rate:g} ev/s + 1 Hz GPU for {args.seconds:g} s"
                  f" ({r2['events']:,} events), repaint {args.repaint_hz:g} Hz")
            print(f"  rows on screen brought up to date: {r2['drawn_n']:,}; changed rows left"
                  f" stale off screen: {r2['offscreen_n']:,}")
            print(f"  event -> cells applied p50/p99 {r2['applied_p50'] * ms:6.1f} / "
                  f"{r2['applied_p99'] * ms:6.1f} ms")
            print(f"  event -> screen       p50/p99 {r2['screen_p50'] * ms:6.1f} / "
                  f"{r2['screen_p99'] * ms:6.1f} ms   (target p99 < 250 ms)")
            print(f"  key -> repaint        p50/p99 {r2['key_p50'] * ms:6.1f} / "
                  f"{r2['key_p99'] * ms:6.1f} ms over {r2['key_n']} keys   (target < 100 ms)")
            print(f"  console CPU {r2['cpu']:.0%} of a core   (target < 30%)")
            print(f"  peak RSS {r2['peak_rss']:.0f} MB   (target < 300 MB)")


if __name__ == "__main__":
    main()
