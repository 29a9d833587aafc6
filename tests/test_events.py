import json

import pytest

from runner.control import ACTION_ARGS
from runner.event_data import EVENT_DATA, RunEndedData, RunHeldData
from runner.events import (
    KINDS,
    Event,
    EventError,
    EventFactory,
    RejectCounter,
    decode_payload,
    encode_batch,
    parse_event,
    status_after,
)


def ev(**over):
    base = {"v": 1, "run": "r1", "seq": 1, "ts": 1.5, "kind": "metric", "data": {"step": 1}}
    base.update(over)
    return base


def test_round_trip_batch():
    f = EventFactory("r1")
    events = [f.make("run.created", {"task": "t"}), f.make("metric", {"step": 1, "values": {"loss": 1.0}})]
    assert [e.seq for e in events] == [1, 2]
    assert decode_payload(encode_batch(events)) == events


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (ev(kind="nope.kind"), "unknown_kind"),
        (ev(seq=0), "bad_seq"),
        (ev(seq=True), "bad_seq"),
        (ev(seq="3"), "bad_seq"),
        (ev(run="../etc"), "bad_run"),
        (ev(run=""), "bad_run"),
        (ev(ts=float("inf")), "bad_ts"),
        (ev(ts=-1), "bad_ts"),
        (ev(data=[1]), "bad_data"),
        (ev(v=2), "bad_version"),
        ({**ev(), "extra": 1}, "unknown_field"),
        ([1, 2], "not_object"),
    ],
)
def test_contract_breaches_have_reasons(obj, reason):
    with pytest.raises(EventError) as err:
        parse_event(obj)
    assert err.value.reason == reason


def test_payload_errors():
    with pytest.raises(EventError) as err:
        decode_payload(b"\xff\xfe not json")
    assert err.value.reason == "bad_json"
    with pytest.raises(EventError) as err:
        decode_payload(b"[" + b" " * (5 * 1024 * 1024) + b"]")
    assert err.value.reason == "oversized"
    single = decode_payload(json.dumps(ev()).encode())
    assert single == [Event("r1", 1, 1.5, "metric", {"step": 1})]


def test_factory_refuses_unknown_kinds_and_huge_data():
    f = EventFactory("r1")
    with pytest.raises(EventError):
        f.make("made.up")
    with pytest.raises(EventError) as err:
        f.make("sandbox.output", {"text": "x" * (300 * 1024)})
    assert err.value.reason == "oversized"
    assert f.next_seq == 1  # nothing was consumed: the sequence stays gapless


def test_status_is_derived_from_events():
    f = EventFactory("r1")
    s = "queued"
    for kind, data, want in [
        ("run.created", {}, "queued"),
        ("run.started", {}, "running"),
        ("run.held", {"level": "hold"}, "held"),
        ("run.resumed", {}, "running"),
        ("run.held", {"level": "freeze"}, "frozen"),
        ("run.ended", {"status": "killed"}, "killed"),
        ("run.started", {}, "killed"),  # terminal is terminal
    ]:
        s = status_after(s, f.make(kind, data))
        assert s == want


def test_kinds_cover_the_design_families():
    for family in ("run.", "agent.", "tool.", "operator.", "integrity."):
        assert any(k.startswith(family) for k in KINDS)
    for kind in ("sandbox.output", "metric", "gpu", "resource", "usage", "control.ack", "score"):
        assert kind in KINDS


# What the emitters send, kind by kind (the supervisor, the engine, the agents, the GPU
# sampler, the sandboxes' stats, the demo journal); every kind of the contract is here.
EMITTED: dict[str, list[dict]] = {
    "run.created": [
        {"task": "mini_pile", "agent": "anthropic", "model": "claude-sonnet-4-5", "scale": "smoke",
         "limits": {"time_s": 3600.0, "steps": 200}, "runner": "gpu-host-1", "job": None,
         "approval": False, "submitted_by": "", "metric": "loss"},
        {"task": "baby_lm", "agent": "scripted", "job": "j1", "runner": "r", "scale": "smoke",
         "limits": {}},  # a job the engine refused
    ],
    "run.started": [{"elapsed_s": 0.0}, {}],
    "run.held": [{"level": "hold", "elapsed_s": 12.5}, {"level": "freeze", "elapsed_s": 3}],
    "run.resumed": [{"elapsed_s": 14.0}],
    "run.warning": [{"code": "not_isolated", "message": "local sandbox: no Docker engine"}],
    "run.limit": [{"limit": "time_s", "used": 2900.0, "max": 3600, "fraction": 0.806,
                   "level": "warning"},
                  {"limit": "steps", "used": 10.0, "max": 10, "fraction": 1.0, "level": "reached"}],
    "run.ended": [{"status": "succeeded", "reason": "submitted", "elapsed_s": 30.0, "steps": 4},
                  {"status": "failed", "reason": "the runner stopped before the run ended"}],
    "agent.step": [{"step": 3, "time_left_s": 3570.0, "elapsed_s": 30.0},
                   {"step": 4, "time_left_s": 3500.123, "elapsed_s": 100.0,
                    "messages": ["try a smaller learning rate"],
                    "notices": ["Warning: you have used 80% of your steps limit."]}],
    "agent.turn": [{"step": 4, "text": "Training now.", "done": False,
                    "calls": [{"id": "toolu_1", "name": "bash", "args": {"command": "python3 train.py"}}],
                    "state": {"tpc": 0.25, "forced": 0, "wire": [{"command": "python3 train.py"}]}},
                   {"step": 5, "text": "", "done": False, "calls": [], "state": {},
                    "payload": "5.json"}],
    "run.adopted": [{"runner": "gpu-host-1", "downtime_s": 42.0, "counted_s": 42.0,
                     "elapsed_s": 3642.0, "resumed_call": "toolu_1"},
                    {"runner": "gpu-host-1", "elapsed_s": 0.0}],
    "run.detached": [{"reason": "the runner daemon stopped and left the run going",
                      "runner": "gpu-host-1"}],
    "agent.message": [
        {"role": "assistant", "text": "I will look at the starter files first.", "step": 1},
        {"role": "system", "code": "history_trimmed", "elided": 3, "dropped": 1, "truncated": 0,
         "text": "[conversation trimmed]"},
    ],
    "agent.error": [
        {"error": "rate_limit", "detail": "429", "attempt": 1, "retrying": True, "status": 429,
         "step": 2, "retry_after_s": 1.5},
        {"error": "invalid_tool_arguments", "detail": "not JSON", "call_id": "c1", "tool": "bash",
         "retrying": False},
    ],
    "agent.delta": [{"step": 3, "part": "text", "text": "Let me check the ", "attempt": 1},
                    {"step": 3, "part": "tool_args", "text": "{\"command\": \"nvid", "tool": "bash"},
                    {"step": 3, "part": "thinking", "text": "The loss plateaued, so"}],
    "agent.submit": [{"path": "/workspace/model", "summary": "a small model"}],
    "tool.call": [{"id": "c1", "name": "bash", "args": {"command": "ls", "timeout_s": 60}}],
    "tool.result": [
        {"id": "c1", "name": "bash", "ok": True, "exit_code": 0, "duration_s": 1.25,
         "output": "total 24\n", "truncated": False, "timed_out": False},
        {"id": "c2", "name": "bash", "ok": False, "exit_code": None, "duration_s": 0.0,
         "output": "invalid arguments", "error": "invalid_call"},
        {"id": "c3", "name": "submit", "ok": True, "exit_code": None, "duration_s": 0.5,
         "output": "submitted model", "submitted": True, "edited": True},
        {"id": "c4", "name": "bash", "ok": False, "exit_code": None, "duration_s": 0.0,
         "output": "The operator rejected this call: no", "rejected": True},
    ],
    "tool.approval": [{"id": "c1", "state": "pending", "name": "bash"},
                      {"id": "c1", "state": "approved", "edited": False}],
    "sandbox.started": [{"backend": "docker", "id": "c0ffee12", "image": "mlrb-base:bookworm",
                         "isolated": True, "limits": {"cpus": 4.0, "memory_gb": 16, "gpus": 1}},
                        {"backend": "local", "id": "4242", "image": None, "isolated": False,
                         "limits": {"cpus": 2.0, "memory_gb": 8.0, "gpus": 0}}],
    "sandbox.output": [{"stream": "stdout", "text": "epoch 1\n"}, {"stream": "stderr", "text": ""}],
    "sandbox.stopped": [{"exit_code": 137, "reason": "killed"}],
    "net.request": [{"method": "CONNECT", "host": "huggingface.co", "port": 443, "status": 200,
                     "allowed": True, "result": "TCP_TUNNEL", "sent_bytes": 812,
                     "received_bytes": 48_000, "duration_ms": 140},
                    {"method": "GET", "host": "example.com", "port": 80, "status": 403,
                     "allowed": False, "result": "TCP_DENIED", "sent_bytes": 70,
                     "received_bytes": 3398, "duration_ms": 0}],
    "metric": [{"step": 20, "values": {"loss": 2.5, "accuracy": 1}, "source": "file"},
               {"step": 1, "values": {"loss": 0.5}, "source": "stdout"}],
    "gpu": [{"device": 0, "util": 97.0, "mem_used": 71 << 30, "mem_total": 80 << 30,
             "power_w": 612.0, "temp_c": 71.0, "proc_mem": 0},
            {"device": 1, "util": None, "mem_used": None, "mem_total": None, "power_w": None,
             "temp_c": None, "proc_mem": 1 << 30}],
    "resource": [{"cpu_pct": 180.5, "mem_bytes": 5 << 30, "mem_limit": 16 << 30, "cpu_limit": 4.0,
                  "pids": 12, "elapsed_s": 40.0},
                 {"cpu_pct": None, "mem_bytes": None, "mem_limit": None, "cpu_limit": 2.0,
                  "pids": None, "elapsed_s": 1.0},
                 {"elapsed_s": 2.0}],  # a sandbox whose stats came back empty
    "usage": [{"model": "claude-sonnet-4-5", "provider": "anthropic", "input_tokens": 4200,
               "output_tokens": 310, "cost_usd": 0.0173, "priced": True, "latency_s": 4.1,
               "stop_reason": "tool_use"},
              {"model": "claude-sonnet-4-5", "provider": "anthropic", "input_tokens": 52_000,
               "output_tokens": 410, "cost_usd": 0.0311, "priced": True, "latency_s": 6.0,
               "stop_reason": "tool_use", "cache_write_tokens": 1800, "cache_read_tokens": 50_000,
               "cache_ttl": "1h"},
              {"model": "local-llama", "provider": "openai", "input_tokens": 900,
               "output_tokens": 20, "cost_usd": None, "priced": False, "cache_read_tokens": 0}],
    "operator.hold": [{"operator": "ada@ops", "reason": "look", "command_id": "c1",
                       "ts_sent": 1.5}],
    "operator.freeze": [{"operator": "ada@ops", "reason": "", "command_id": "c1", "ts_sent": 1.5}],
    "operator.resume": [{"operator": "ada@ops", "reason": "", "command_id": "c1", "ts_sent": 1.5}],
    "operator.kill": [{"operator": "ada@ops", "reason": "runaway", "command_id": "c1",
                       "ts_sent": 1.5}],
    "operator.message": [{"operator": "ada@ops", "reason": "", "command_id": "c1", "ts_sent": 1.5,
                          "text": "try a smaller learning rate"}],
    "operator.approve": [{"operator": "ada@ops", "reason": "", "command_id": "c1", "ts_sent": 1.5,
                          "call_id": "t1", "args": {"command": "ls"}},
                         {"operator": "ada@ops", "reason": "", "command_id": "c2", "ts_sent": 1.5,
                          "call_id": "t2"}],
    "operator.reject": [{"operator": "ada@ops", "reason": "no", "command_id": "c1", "ts_sent": 1.5,
                         "call_id": "t1"}],
    "operator.approval_mode": [{"operator": "ada@ops", "reason": "", "command_id": "c1",
                                "ts_sent": 1.5, "on": True}],
    "operator.limit": [{"operator": "ada@ops", "reason": "", "command_id": "c1", "ts_sent": 1.5,
                        "name": "steps", "value": 50.0}],
    "operator.shell": [{"operator": "ada@ops", "reason": "", "command_id": "c1", "ts_sent": 1.5,
                        "state": "end", "exit_code": 0},
                       {"operator": "ada@ops", "reason": "", "command_id": "c1", "ts_sent": 1.5,
                        "state": "start"}],
    "operator.score": [{"operator": "ada@ops", "reason": "", "command_id": "c1", "ts_sent": 1.5}],
    "control.ack": [{"command_id": "c1", "action": "hold", "accepted": True,
                     "reason": "the agent stops at its next step", "operator": "ada@ops"}],
    "score": [{"metric": "loss", "value": 2.1, "metrics": {"loss": 2.1, "ppl": 8.2},
               "details": {"n": 100, "split": "val"}, "error": None, "final": True},
              {"metric": "loss", "value": None, "metrics": {}, "details": {},
               "error": "scorer printed no result", "final": False}],
    "integrity.flag": [{"check": "workspace_size", "severity": "warning",
                        "detail": "workspace grew past 20 GB"}],
    "notify.sent": [{"channel": "json://127.0.0.1:8080/hook", "kind": "ended", "result": "ok",
                     "title": "MLRB: r1 ended succeeded", "trigger_seq": 12},
                    {"channel": "ntfy://mlrb-lab", "kind": "broker", "result": "failed",
                     "error": "A Connection error occurred sending ntfy notification.",
                     "title": "MLRB: 7 notifications at once", "digest": 7}],
}

# A field of each kind that holds a number, a string or a bool, to break on purpose.
NUMBER_FIELDS = {"run.limit": "used", "run.ended": "elapsed_s", "agent.step": "step",
                 "metric": "step", "gpu": "util", "resource": "mem_bytes", "usage": "cost_usd",
                 "score": "value", "operator.limit": "value", "tool.result": "duration_s"}


def test_every_kind_has_a_model_and_emitted_samples() -> None:
    assert set(EVENT_DATA) == KINDS == set(EMITTED)


@pytest.mark.parametrize(("kind", "data"), [(k, d) for k, ds in EMITTED.items() for d in ds])
def test_each_kind_accepts_what_its_emitters_send(kind: str, data: dict) -> None:
    ev = EventFactory("r1").make(kind, data)
    assert isinstance(ev.body, EVENT_DATA[kind])
    assert ev.data == data  # the record keeps what was sent, as sent
    back = decode_payload(encode_batch([ev]))[0]  # and it reads back the same on the bus
    assert back == ev and back.body == ev.body


@pytest.mark.parametrize("kind", sorted(EMITTED))
def test_an_unknown_key_is_refused(kind: str) -> None:
    with pytest.raises(EventError) as err:
        EventFactory("r1").make(kind, {**EMITTED[kind][0], "surprise": 1})
    assert err.value.reason == "bad_data" and "surprise" in err.value.detail


@pytest.mark.parametrize("kind", sorted(NUMBER_FIELDS))
@pytest.mark.parametrize("bad", [True, "3", float("nan"), float("inf"), [1]])
def test_a_number_is_a_finite_number_and_never_a_bool(kind: str, bad: object) -> None:
    field = NUMBER_FIELDS[kind]
    f = EventFactory("r1")
    with pytest.raises(EventError) as err:
        f.make(kind, {**EMITTED[kind][0], field: bad})
    assert err.value.reason == "bad_data"
    assert f.next_seq == 1  # nothing was consumed: the sequence stays gapless
    with pytest.raises(EventError) as err:  # a peer that sends it is refused the same way
        parse_event(ev(kind=kind, data={**EMITTED[kind][0], field: bad}))
    assert err.value.reason == "bad_data"


@pytest.mark.parametrize(("kind", "data"), [
    ("metric", {"step": 1, "values": {"loss": "low"}}),
    ("metric", {"step": 1, "values": {"loss": False}}),
    ("metric", {"step": 1.5}),  # a step is a whole number
    ("metric", {"values": [1.0]}),
    ("tool.call", {"id": "c1", "name": "bash", "args": "ls"}),
    ("tool.call", {"name": "bash", "args": {}}),  # no id
    ("tool.result", {"id": "c1", "name": "bash", "ok": 1}),
    ("tool.approval", {"id": "c1", "state": "maybe"}),
    ("sandbox.output", {"stream": "stdin", "text": "x"}),
    ("sandbox.output", {"stream": "stdout", "text": 7}),
    ("run.held", {"level": "nap"}),
    ("run.ended", {"status": "running"}),
    ("run.ended", {"reason": "no status"}),
    ("run.created", {"limits": {"time_s": "an hour"}}),
    ("run.created", {"approval": 1}),
    ("control.ack", {"command_id": "c", "action": "teleport", "accepted": True}),
    ("operator.limit", {"operator": "a", "name": "patience", "value": 3.0}),
    ("operator.hold", {"reason": "nobody"}),
    ("gpu", {"device": "0"}),
])
def test_wrong_shapes_are_refused(kind: str, data: dict) -> None:
    with pytest.raises(EventError) as err:
        EventFactory("r1").make(kind, data)
    assert err.value.reason == "bad_data"


def test_a_malformed_event_on_the_bus_is_counted_by_reason() -> None:
    rejects = RejectCounter()
    good = ev(data={"step": 1, "values": {"loss": 0.5}})
    for payload in ([good, ev(seq=2, data={"step": 2, "values": {"loss": "nan"}})],
                    ev(kind="gpu", data={"util": True}), ev(kind="run.held", data={"level": 3}),
                    [good]):
        try:
            decode_payload(json.dumps(payload).encode())
        except EventError as exc:  # what the bus does with a payload that breaks the contract
            rejects.add(exc.reason, exc.detail)
    assert dict(rejects.counts) == {"bad_data": 3}
    assert rejects.last["bad_data"].startswith("run.held level")


def test_status_after_reads_the_typed_fields() -> None:
    f = EventFactory("r1")
    held = f.make("run.held", {})  # a hold with no level is a plain hold
    assert isinstance(held.body, RunHeldData) and held.body.level == "hold"
    assert status_after("running", held) == "held"
    ended = f.make("run.ended", {"status": "limit", "reason": "steps"})
    assert isinstance(ended.body, RunEndedData) and ended.body.status == "limit"
    assert status_after("running", ended) == "limit"


def test_mlrb_schema_lists_every_kind_with_its_fields() -> None:
    from click.testing import CliRunner

    from mlrb_tui.cli import cli

    out = CliRunner().invoke(cli, ["schema", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["version"] == 1
    assert set(doc["events"]) == KINDS
    for kind, schema in doc["events"].items():
        assert set(schema["properties"]) == set(EVENT_DATA[kind].model_fields), kind
        assert schema["additionalProperties"] is False, kind
    assert doc["events"]["metric"]["properties"]["values"]["additionalProperties"] == {
        "type": "number"}
    assert set(doc["controls"]) == set(ACTION_ARGS)
    assert set(doc["controls"]["limit"]["properties"]) == {"name", "value"}
    text = CliRunner().invoke(cli, ["schema"])
    assert text.exit_code == 0
    lines = text.output.splitlines()
    assert all(f"  {kind}" in lines or f"  {kind}  (no fields)" in lines for kind in KINDS)
    assert any(line.split() == ["step", "integer", "|", "null", "=", "null"] for line in lines)
