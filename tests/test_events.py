import json

import pytest

from runner.events import (
    KINDS,
    Event,
    EventError,
    EventFactory,
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
