"""Ten thousand bad payloads on every topic during a live run: the engine, a console's source
and the recorder stay up, count each payload by its reason, and lose nothing real."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from mlrb_tui.source import LiveSource
from runner.bus import Topics
from runner.config import Config
from runner.embedded_broker import find_mosquitto
from runner.engine import Engine, Job
from runner.events import MAX_PAYLOAD_BYTES, TERMINAL_STATUSES, RejectCounter
from runner.journal import JournalReader
from runner.recorder import Recorder
from tests.conftest import raw_client, require, until

FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"
TOTAL = 10_000
CHUNK = 500  # published together, then counted, before the next: the flood is bounded in time
FLOOD_S = 120.0  # the whole flood must be sent and counted within this

Bad = tuple[bytes, str]  # a payload and the reason it must be counted under


def event(owner: str | None, **change: object) -> bytes:
    ev: dict[str, object] = {"v": 1, "run": owner, "seq": 1, "ts": 1.0, "kind": "sandbox.output",
          "data": {"stream": "stdout", "text": "forged"}}
    ev.update(change)
    return json.dumps([ev]).encode()


def families(run: str) -> dict[str, list[Bad]]:
    """Per topic kind: malformed, wrong-typed and oversized payloads, each with its reason."""
    return {
        "event": [
            (b"{not json", "bad_json"), (b"\xff\xfe\x00", "bad_json"), (b"[1, 2]", "not_object"),
            (event(run, seq="7"), "bad_seq"), (event(run, seq=True), "bad_seq"),
            (event(run, ts="now"), "bad_ts"), (event(run, kind=5), "bad_kind"),
            (event(run, kind="agent.teleport"), "unknown_kind"), (event(run, data=[1]), "bad_data"),
            (event(run, data={"stream": "stdout", "text": 7}), "bad_data"),
            (event(run, v=99), "bad_version"), (event(run, sudo=True), "unknown_field"),
            (event("run-other"), "run_mismatch"), (event(None), "bad_run"),
        ],
        "state": [
            (b"{", "bad_state"), (b"[1]", "bad_state"), (b'{"seqs": {"run-a": "7"}}', "bad_state"),
            (json.dumps({"seqs": {run: -1}}).encode(), "bad_state"),
            (b'{"bus": {"resent": "many"}}', "bad_state"), (b"\xff", "bad_state"),
        ],
        "control": [
            (b"{", "bad_control"), (b'{"id": 5}', "bad_control"), (b"[]", "bad_control"),
            (json.dumps({"id": "c1", "run": run, "action": "detonate", "operator": "x",
                         "reason": ""}).encode(), "bad_control"),
        ],
        "job": [
            (b"{", "bad_json"), (b'{"task": 7}', "bad_job"), (b"[1]", "bad_job"),
            (b'"tiny_train"', "bad_job"), (b"\xff", "bad_json"),
        ],
        "repair": [
            (b"{", "bad_repair"), (b'{"from_seq": "1", "to_seq": 2}', "bad_repair"),
            (b'{"from_seq": 9, "to_seq": 3}', "bad_repair"), (b'{"from_seq": 0, "to_seq": 1}', "bad_repair"),
            (b'{"from_seq": 1, "to_seq": 2, "all": true}', "bad_repair"),
        ],
    }


OVERSIZED = {"event": MAX_PAYLOAD_BYTES + 1, "state": 64 * 1024 + 1, "control": 64 * 1024 + 1,
             "job": 64 * 1024 + 1, "repair": 1024 + 1}
OVERSIZED_EVERY = {"event": 400, "state": 20, "control": 20, "job": 20, "repair": 20}


def flood_plan(run: str, runner: str, operator: str,
               topics: Topics) -> list[tuple[str, str, bytes, str]]:
    """TOTAL payloads as (topic kind, topic, payload, reason), the topics taken in turn."""
    where = {"event": topics.event(runner, run), "state": topics.runner_state(runner),
             "control": topics.control(run, operator), "job": topics.jobs_of(operator),
             "repair": topics.repair(run)}
    fams = families(run)
    plan = []
    for i in range(TOTAL):
        kind = list(where)[i % len(where)]
        n = i // len(where)
        if n % OVERSIZED_EVERY[kind] == 0:
            payload, reason = b"[" + b" " * OVERSIZED[kind] + b"]", "oversized"
        else:
            payload, reason = fams[kind][n % len(fams[kind])]
        plan.append((kind, where[kind], payload, reason))
    return plan


def expected(plan: list[tuple[str, str, bytes, str]], kinds: set[str]) -> Counter[str]:
    return Counter(reason for kind, _, _, reason in plan if kind in kinds)


def flood_counts(counter: RejectCounter, reasons: Counter[str]) -> Counter[str]:
    """The counter's counts of the reasons the flood causes (a subscriber's own repairs aside)."""
    return Counter({r: counter.counts[r] for r in reasons if counter.counts[r]})


@pytest.mark.mosquitto
async def test_ten_thousand_bad_payloads_on_every_topic_during_a_live_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require(find_mosquitto() is not None, "mosquitto")
    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    monkeypatch.setenv("TINY_STEPS", "280")  # about 70 s of training: the flood lands mid-run
    monkeypatch.setenv("TINY_DELAY", "0.25")
    engine = Engine(Config(home=tmp_path / "host", backend="local"), runner_id="host-a")
    await engine.start()
    assert engine.bus_url is not None and engine.broker is not None and engine.journal is not None
    broker = engine.broker
    topics = Topics(broker.prefix)
    rec = Recorder(broker.bus_config("viewer"), tmp_path / "fleet.db", client_id="mlrb-recorder-flood")
    rec_task = asyncio.create_task(rec.run())
    console = LiveSource(tmp_path / "host" / "mlrb.db", broker.bus_config("operator"))
    local, central = JournalReader(tmp_path / "host" / "mlrb.db"), JournalReader(tmp_path / "fleet.db")
    loop = asyncio.get_running_loop()
    try:
        await console.start()
        sub = console.subscriber
        assert sub is not None
        await asyncio.wait_for(asyncio.gather(rec.ready.wait(), sub.ready.wait()), 10)
        await until(lambda: topics.shared_jobs in engine.job_taker.subscribed, "the jobs subscription")
        run = await engine.submit(Job(task="tiny_train"))
        await until(lambda: (console.fleet.rows.get(run) or {}).get("metric_name"),
                    "the training's first metrics on the console", timeout=120)

        operator = broker.bus_config("operator")
        plan = flood_plan(run, engine.runner_id, str(operator.username), topics)
        at_subscribers = expected(plan, {"event", "state"})
        at_engine = expected(plan, {"control", "job"})
        at_repair = expected(plan, {"repair"})

        def counted(sent: list[tuple[str, str, bytes, str]]) -> Callable[[], bool]:
            want = [expected(sent, {"event", "state"})] * 2 + [expected(sent, {"control", "job"}),
                                                              expected(sent, {"repair"})]
            parts = [(console.rejects, at_subscribers), (rec.rejects, at_subscribers),
                     (engine.rejects, at_engine), (engine.publisher.repair_rejects, at_repair)]
            return lambda: all(flood_counts(c, r) == w for (c, r), w in zip(parts, want, strict=True))

        # each topic flooded by an account the ACL lets publish there: the bad payloads get
        # past the broker and reach the parts that must count them
        publisher_of = {"event": "runner", "state": "runner", "control": "operator",
                        "job": "operator", "repair": "viewer"}
        started = loop.time()
        async with contextlib.AsyncExitStack() as stack:
            forgers = {role: await stack.enter_async_context(raw_client(broker.bus_config(role)))
                       for role in set(publisher_of.values())}
            for i in range(0, TOTAL, CHUNK):
                chunk = plan[i:i + CHUNK]
                await asyncio.gather(*(forgers[publisher_of[kind]].publish(topic, payload, qos=1)
                                       for kind, topic, payload, _ in chunk))
                left = FLOOD_S - (loop.time() - started)
                await until(counted(plan[:i + len(chunk)]), f"payloads {i + 1}-{i + len(chunk)} "
                            "counted by reason", timeout=max(left, 1.0), interval=0.05)
        assert loop.time() - started < FLOOD_S
        assert not engine.supervisors[run].ended, "the flood ended after the run: make the run longer"

        # every payload counted once by each part it reached, under its reason
        assert sum(at_subscribers.values()) + sum(at_engine.values()) + sum(at_repair.values()) == TOTAL
        assert at_subscribers["oversized"] > 0 and at_engine["oversized"] > 0 and at_repair["oversized"] > 0
        assert Counter(console.rejects.counts) == at_subscribers
        assert Counter(rec.rejects.counts) == at_subscribers
        assert Counter(engine.rejects.counts) == at_engine
        # a subscriber's own request that comes when a range was just served is coalesced
        extra = set(engine.publisher.repair_rejects.counts) - set(at_repair)
        assert extra <= {"repair_coalesced"}, engine.publisher.repair_rejects.counts

        # nothing real lost: the run ends well, and every copy of it equals the journal
        assert (await engine.wait([run]))[run] == "succeeded"
        await until(lambda: [e.wire for e in central.events(run, 0, 100000)]
                    == [e.wire for e in local.events(run, 0, 100000)],
                    "the recorder's copy to equal the journal", timeout=60)
        await until(lambda: console.fleet.rows[run]["status"] == "succeeded"
                    and console.fleet.last_seq(run) == local.max_seq(run), "the console's row", timeout=30)
        assert [r["run"] for r in local.list_runs()] == [run]  # no forged job became a run
        assert engine.publisher.connected and sub.connected and rec.subscriber.connected
        assert sub.reconnects == 0 and rec.subscriber.reconnects == 0
        assert engine.publisher.counts().reconnects == 0
        assert all(row["status"] in TERMINAL_STATUSES for row in local.list_runs())
    finally:
        await console.stop()
        rec_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rec_task
        await engine.stop()
        local.close()
        central.close()
