"""The flags cell shows an active stall alarm, and the fold clears it when the run moves."""

from __future__ import annotations

from mlrb_tui.cells import COLUMNS
from mlrb_tui.signals import RunSignals
from runner.events import Event

FLAGS = next(c for c in COLUMNS if c.key == "flags")


class Feed:
    def __init__(self) -> None:
        self.sig = RunSignals()
        self.seq = 0

    def __call__(self, kind: str, data: dict | None = None) -> None:
        self.seq += 1
        self.sig.apply(Event("r1", self.seq, float(self.seq), kind, data or {}))

    def warn(self, code: str, idle_s: float = 60.0) -> None:
        self("run.warning", {"code": code, "message": f"{code} for a while", "idle_s": idle_s})

    def cell(self) -> str:
        return FLAGS.render(FLAGS.value({"status": "running", "isolated": 1}, 0.0, self.sig)).plain


def test_an_alarm_shows_in_the_flags_until_its_condition_ends() -> None:
    feed = Feed()
    assert feed.cell() == ""
    feed("tool.call", {"id": "c1", "name": "bash", "args": {}})
    feed.warn("stalled")
    feed.warn("gpu_idle")
    feed.warn("llm_slow")
    assert feed.cell() == "⚠stall idle llm"
    feed("resource", {"cpu_pct": 1.0})
    feed("gpu", {"device": 0, "util": 1.0})
    assert feed.cell() == "⚠stall idle llm"  # sampling is no progress, an idle GPU no work
    feed("sandbox.output", {"stream": "stdout", "text": "epoch 1\n"})
    assert feed.cell() == "⚠idle llm"
    feed("gpu", {"device": 0, "util": 80.0})
    assert feed.cell() == "⚠llm"
    feed("usage", {"input_tokens": 1, "output_tokens": 1})
    assert feed.cell() == ""
    assert feed.sig.alarms == {}


def test_other_warnings_raise_no_alarm_and_a_hold_clears_every_alarm() -> None:
    feed = Feed()
    feed("run.warning", {"code": "not_isolated", "message": "local"})
    assert feed.cell() == ""
    feed.warn("gpu_idle")
    feed.warn("llm_slow")
    feed("run.held", {"level": "hold", "elapsed_s": 3.0})
    assert feed.cell() == ""
    feed.warn("gpu_idle", idle_s=1200.0)
    assert feed.sig.alarms == {"gpu_idle": 1200.0}
    feed("tool.result", {"id": "c1", "name": "bash", "ok": True})
    assert feed.cell() == ""
    feed.warn("stalled")
    ended = FLAGS.value({"status": "failed", "isolated": 1}, 0.0, feed.sig)
    assert FLAGS.render(ended).plain == ""  # a finished run shows no live alarm


def test_catching_up_shows_in_the_flags_of_a_live_or_ended_run_while_the_fleet_says_so() -> None:
    from mlrb_tui.state import FleetState

    fleet = FleetState()
    fleet.apply([Event("r1", 1, 1.0, "run.created", {"task": "t", "agent": "scripted"})])
    fleet.take_changes()
    assert fleet.set_catching_up(["r1", "r-unseen"])
    assert fleet.take_changes() == ([], {"r1"})  # a run the fleet has no row for draws nothing
    assert not fleet.set_catching_up(["r-unseen", "r1"])  # no change, no redraw
    sig = fleet.signals["r1"]
    for status in ("running", "succeeded"):
        cell = FLAGS.render(FLAGS.value({"status": status, "isolated": 1}, 0.0, sig)).plain
        assert cell == "↻catching up"
    sig.alarms["stalled"] = 60.0
    cell = FLAGS.render(FLAGS.value({"status": "running", "isolated": 1}, 0.0, sig)).plain
    assert cell == "⚠stall ↻catching up"
    assert fleet.set_catching_up([])
    assert fleet.take_changes() == ([], {"r1"}) and not sig.catching_up
    assert FLAGS.render(FLAGS.value({"status": "running", "isolated": 1}, 0.0, sig)).plain == "⚠stall"
