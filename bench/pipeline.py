"""Pipeline benchmark: Journal -> MQTT broker -> subscriber, with figures printed.

Two phases against the embedded broker (Mosquitto on a free loopback port):

1. throughput: push N synthetic events of several runs as fast as the pipeline takes them;
   report events/s journaled, events/s delivered end to end, and events lost (must be 0);
2. latency: offer a fixed rate (default 1,000 events/s for 10 s); report p50/p99 of the
   delay from journal submit (the event's ts) to receipt by the subscriber.

The subscriber runs in its own process (as the console does), so it does not share the
publisher's interpreter. Finally the journal's rate is compared with raw
`sqlite3.executemany` of the same rows into the same schema, in the same run.

    python bench/pipeline.py --events 100000 --rate 1000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.bus import BusConfig, EventSubscriber, RunnerEndpoint  # noqa: E402
from runner.embedded_broker import EmbeddedBroker  # noqa: E402
from runner.events import Event  # noqa: E402
from runner.journal import SCHEMA, Journal, JournalReader  # noqa: E402

CHUNK = 250  # events per journal submit: what a busy supervisor hands over at once


def synthetic(run: str, seq: int, ts: float) -> Event:
    """A mix like a training run's: output lines, metrics, GPU samples."""
    k = seq % 10
    if k < 6:
        return Event(run, seq, ts, "sandbox.output",
                     {"stream": "stdout", "text": f"epoch 3 step {seq} loss=0.{seq % 9973:04d}"})
    if k < 9:
        return Event(run, seq, ts, "metric",
                     {"step": seq, "values": {"loss": 1.0 / seq, "lr": 3e-4}, "source": "file"})
    return Event(run, seq, ts, "gpu", {"device": 0, "util": 97.0, "mem_used": 71 << 30,
                                       "mem_total": 80 << 30, "power_w": 612.0, "temp_c": 71.0})


# -- the subscriber process ------------------------------------------------------------------
async def subscriber_main(url: str, expect: int, idle: float) -> None:
    latencies: list[float] = []
    keys: set[tuple[str, int]] = set()
    first = last = 0.0

    def on_events(events: list[Event]) -> None:
        nonlocal first, last
        now = time.time()
        first = first or now
        last = now
        for e in events:
            latencies.append(now - e.ts)
            keys.add(e.key)

    # the viewer's account, handed over in the environment (never on a command line)
    sub = EventSubscriber(BusConfig(url, username=os.environ.get("MLRB_BUS_USERNAME"),
                                    password=os.environ.get("MLRB_BUS_PASSWORD")), on_events)
    task = asyncio.create_task(sub.run())
    await sub.ready.wait()
    print("ready", flush=True)
    seen, quiet_since = -1, time.monotonic()
    while len(keys) < expect:
        await asyncio.sleep(0.02)
        if len(latencies) != seen:
            seen, quiet_since = len(latencies), time.monotonic()
        elif time.monotonic() - quiet_since > idle:
            break
    task.cancel()
    latencies.sort()
    n = len(latencies)
    print(json.dumps({
        "received": n, "unique": len(keys), "first": first, "last": last,
        "p50": latencies[n // 2] if n else None,
        "p99": latencies[min(n - 1, int(n * 0.99))] if n else None,
        "max": latencies[-1] if n else None,
        "rejects": sub.rejects.total,
    }), flush=True)


class Subscriber:
    def __init__(self, config: BusConfig, expect: int, idle: float = 10.0) -> None:
        env = {**os.environ, "MLRB_BUS_USERNAME": config.username or "",
               "MLRB_BUS_PASSWORD": config.password or ""}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--subscribe", config.url, "--expect", str(expect),
             "--idle", str(idle)], stdout=subprocess.PIPE, text=True, env=env)

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"subscriber did not start: {line!r}")

    def result(self) -> dict[str, float]:
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait()
        return json.loads(out.strip().splitlines()[-1])


# -- the publisher side -------------------------------------------------------------------
async def throughput(broker: EmbeddedBroker, workdir: Path, n: int, runs: int) -> dict[str, float]:
    db = workdir / "throughput.db"
    journal = Journal(db)
    reader = JournalReader(db)
    pub = RunnerEndpoint(broker.bus_config("bench"), "bench", reader.events)
    await pub.start()
    while not pub.connected:
        await asyncio.sleep(0.01)
    sub = Subscriber(broker.bus_config("viewer"), n)
    await asyncio.to_thread(sub.wait_ready)
    per_run = n // runs
    names = [f"bench-{i}" for i in range(runs)]
    seqs = dict.fromkeys(names, 0)
    pending: list[asyncio.Future[None]] = []
    committed = 0
    t_committed = 0.0

    def on_commit(chunk: list[Event]) -> None:
        nonlocal committed, t_committed
        committed += len(chunk)
        t_committed = time.time()
        pub.publish(chunk)

    t0 = time.time()
    for _ in range(0, per_run, CHUNK):
        for run in names:
            now = time.time()
            chunk = [synthetic(run, seqs[run] + i + 1, now)
                     for i in range(min(CHUNK, per_run - seqs[run]))]
            seqs[run] += len(chunk)
            fut = asyncio.wrap_future(journal.submit(chunk))
            fut.add_done_callback(lambda f, c=chunk: f.exception() or on_commit(c))
            pending.append(fut)
        await asyncio.sleep(0)  # let commits publish while more is submitted
    await asyncio.gather(*pending)
    total = sum(seqs.values())
    flushed = await pub.flush(120)
    res = await asyncio.to_thread(sub.result)
    await pub.stop()
    journal.close()
    rows = reader.events(names[0], 0, 1)
    reader.close()
    assert rows, "nothing journaled"
    return {
        "events": total, "journal_s": t_committed - t0, "journal_rate": total / (t_committed - t0),
        "delivered": res["unique"], "lost": total - res["unique"],
        "e2e_rate": res["unique"] / (res["last"] - t0) if res["unique"] else 0.0,
        "flushed": flushed, "resent": pub.resent, "rejects": res["rejects"],
        "committed": committed,
    }


async def latency(broker: EmbeddedBroker, workdir: Path, rate: int, seconds: float,
                  runs: int) -> dict[str, float]:
    db = workdir / "latency.db"
    journal = Journal(db)
    reader = JournalReader(db)
    pub = RunnerEndpoint(broker.bus_config("bench-lat"), "bench-lat", reader.events)
    await pub.start()
    while not pub.connected:
        await asyncio.sleep(0.01)
    total = int(rate * seconds)
    sub = Subscriber(broker.bus_config("viewer"), total)
    await asyncio.to_thread(sub.wait_ready)
    names = [f"lat-{i}" for i in range(runs)]
    tick = 0.01
    per_tick = rate * tick
    sent, owed, seq = 0, 0.0, 0
    t0 = time.monotonic()
    k = 0
    while sent < total:
        owed += per_tick
        batch: list[Event] = []
        now = time.time()
        while owed >= 1 and sent < total:
            run = names[sent % runs]
            seq = sent // runs + 1
            batch.append(synthetic(run, seq, now))
            sent += 1
            owed -= 1
        if batch:
            await journal.write(batch)
            pub.publish(batch)
        k += 1
        # paced by the clock, so a slow tick is made up rather than stretching the run
        await asyncio.sleep(max(0.0, t0 + k * tick - time.monotonic()))
    await pub.flush(60)
    res = await asyncio.to_thread(sub.result)
    await pub.stop()
    journal.close()
    reader.close()
    return {"events": total, "delivered": res["unique"], "lost": total - res["unique"],
            "p50_ms": (res["p50"] or 0) * 1000, "p99_ms": (res["p99"] or 0) * 1000,
            "max_ms": (res["max"] or 0) * 1000, "offered_s": time.monotonic() - t0}


def raw_sqlite_rate(workdir: Path, n: int, runs: int) -> float:
    """executemany of the same rows into the same schema: the ceiling the journal is held to."""
    conn = sqlite3.connect(workdir / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    per_run = n // runs
    now = time.time()
    rows = [(e.run, e.seq, e.ts, e.kind, json.dumps(e.data, separators=(",", ":")))
            for r in range(runs) for e in (synthetic(f"raw-{r}", s, now)
                                           for s in range(1, per_run + 1))]
    t0 = time.perf_counter()
    for i in range(0, len(rows), 20000):
        conn.execute("BEGIN")
        conn.executemany("INSERT OR IGNORE INTO events (run, seq, ts, kind, data) "
                         "VALUES (?, ?, ?, ?, ?)", rows[i:i + 20000])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return len(rows) / elapsed


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="mlrb-bench-") as tmp:
        workdir = Path(tmp)
        broker = EmbeddedBroker(workdir / "broker", users={"bench": "runner", "bench-lat": "runner"})
        url = await broker.start()
        try:
            print(f"broker: {broker.kind} at {url}; cpus: {os.cpu_count()}; "
                  f"python {sys.version.split()[0]}")
            t = await throughput(broker, workdir, args.events, args.runs)
            print(f"throughput: {t['events']:,} events over {args.runs} runs")
            print(f"  journaled:  {t['journal_rate']:>10,.0f} events/s "
                  f"({t['journal_s']:.2f} s to commit all)")
            print(f"  delivered:  {t['e2e_rate']:>10,.0f} events/s end to end "
                  f"(journal -> broker -> subscriber process)")
            print(f"  lost:       {t['lost']:>10,}   (re-sent {t['resent']:,}, "
                  f"rejected {t['rejects']})")
            raw = raw_sqlite_rate(workdir, args.events, args.runs)
            print(f"  raw sqlite3.executemany of the same rows: {raw:,.0f} rows/s; "
                  f"journal/raw = {t['journal_rate'] / raw:.2f}")
            lat = await latency(broker, workdir, args.rate, args.seconds, args.runs)
            print(f"latency at {args.rate:,} events/s offered for {args.seconds:g} s "
                  f"({lat['events']:,} events, {lat['offered_s']:.1f} s):")
            print(f"  p50 {lat['p50_ms']:.1f} ms   p99 {lat['p99_ms']:.1f} ms   "
                  f"max {lat['max_ms']:.1f} ms   lost {lat['lost']}")
            ok = (t["lost"] == 0 and lat["lost"] == 0 and t["journal_rate"] >= 20000
                  and t["e2e_rate"] >= 20000 and lat["p99_ms"] < 100)
            print("targets (>= 20,000 events/s journaled and delivered, none lost, "
                  f"p99 < 100 ms): {'met' if ok else 'NOT met'}")
        finally:
            await broker.stop()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000, help="events in the throughput phase")
    p.add_argument("--runs", type=int, default=8, help="runs the events are spread over")
    p.add_argument("--rate", type=int, default=1000, help="offered events/s in the latency phase")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    p.add_argument("--subscribe", help=argparse.SUPPRESS)
    p.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--idle", type=float, default=10.0, help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    a = parse()
    if a.subscribe:
        asyncio.run(subscriber_main(a.subscribe, a.expect, a.idle))
    else:
        asyncio.run(main(a))
