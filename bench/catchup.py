"""Catch-up benchmark: the embedded broker dies under 50 live runs; how soon is the recorder's
central journal whole again, and how fast does it catch up?

One runner endpoint publishes N runs' events (default 50 runs, 20 events/s each) from its
journal; a recorder keeps the central journal. The broker is killed, and its supervised restart
is held back for `--outage` seconds (as when a broker
host reboots); the runs keep journaling meanwhile. The figures:

- from the broker's restart to the recorder's copy equal to the runner's journal, run by run;
- the catch-up rate: events the recorder journaled in that time, per second (live events
  included: the runs never stop).

    python bench/catchup.py --runs 50 --rate 20 --outage 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.bus import RunnerEndpoint  # noqa: E402
from runner.embedded_broker import EmbeddedBroker  # noqa: E402
from runner.events import EventFactory  # noqa: E402
from runner.journal import Journal, JournalReader  # noqa: E402
from runner.recorder import Recorder  # noqa: E402


async def produce(journal: Journal, pub: RunnerEndpoint, runs: list[str], rate: float,
                  stop: asyncio.Event) -> None:
    factories = {r: EventFactory(r) for r in runs}
    tick = 0.1
    per_tick = max(int(rate * tick), 1)
    while not stop.is_set():
        batch = [factories[r].make("sandbox.output", {"stream": "stdout", "text": f"step {i} loss 0.5"})
                 for r in runs for i in range(per_tick)]
        await journal.write(batch)
        pub.publish(batch)
        await asyncio.sleep(tick)


def behind(host: JournalReader, central: JournalReader, runs: list[str]) -> int:
    """Events the central journal lacks, over all runs."""
    return sum(max(host.max_seq(r) - central.max_seq(r), 0) for r in runs)


def central_count(central: JournalReader, runs: list[str]) -> int:
    return sum(central.max_seq(r) for r in runs)


async def main(n: int, rate: float, outage: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mlrb-catchup-"))
    broker = EmbeddedBroker(tmp / "broker", runner="host-a")
    await broker.start()
    journal = Journal(tmp / "host.db")
    local = JournalReader(tmp / "host.db")
    pub = RunnerEndpoint(broker.bus_config("runner"), "host-a", local.events)
    await pub.start()
    rec = Recorder(broker.bus_config("viewer"), tmp / "fleet.db", client_id="mlrb-recorder-bench")
    rec_task = asyncio.create_task(rec.run())
    await asyncio.wait_for(rec.ready.wait(), 15)
    central = JournalReader(tmp / "fleet.db")
    runs = [f"run-{i:02d}" for i in range(n)]
    stop = asyncio.Event()
    producer = asyncio.create_task(produce(journal, pub, runs, rate, stop))
    try:
        await asyncio.sleep(5)
        db = broker.workdir / "mosquitto.db"
        while not (db.exists() and b"mlrb-recorder-bench" in db.read_bytes()):
            await asyncio.sleep(0.2)  # the recorder's session is saved: the broker queues for it
        print(f"{n} runs at {rate:g} events/s each ({n * rate:g} events/s); recorder behind by "
              f"{behind(local, central, runs)} events")
        assert broker._proc is not None
        gate = asyncio.Event()
        start_mosquitto = broker._start_mosquitto

        async def held_back(exe: str, port: int) -> None:
            await gate.wait()  # the outage: no restart until it is over
            await start_mosquitto(exe, port)

        broker._start_mosquitto = held_back  # type: ignore[method-assign]
        os.kill(broker._proc.pid, signal.SIGKILL)
        await asyncio.sleep(outage)
        gate.set()
        missed = behind(local, central, runs)
        while not (broker.running and broker.restarts >= 1):
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        before = central_count(central, runs)
        print(f"broker down {outage:g} s; restarted; recorder behind by {missed} events")
        pub.retry_now()
        while behind(local, central, runs) > 0:
            await asyncio.sleep(0.05)
        took = time.monotonic() - t0
        caught = central_count(central, runs) - before
        print(f"broker restart -> recorder caught up:  {took:.2f} s")
        print(f"catch-up rate:                         {caught / took:,.0f} events/s "
              f"({caught} events journaled by the recorder meanwhile)")
        print(f"repairs asked by the recorder:         {rec.subscriber.repairs_requested}")
    finally:
        stop.set()
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        await pub.stop()
        rec_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rec_task
        journal.close()
        await broker.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rate", type=float, default=20.0, help="events per second per run")
    ap.add_argument("--outage", type=float, default=30.0, help="seconds the broker stays down")
    args = ap.parse_args()
    asyncio.run(main(args.runs, args.rate, args.outage))
