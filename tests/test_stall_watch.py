"""StallWatch on a fake clock: each alarm fires once per episode, clears, fires again, and
stays quiet while the run is not active."""

from __future__ import annotations

from runner.stall_watch import StallWatch, Thresholds, fmt_span


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def watch(quiet: float = 0, gpu_idle: float = 0, llm: float = 0) -> tuple[StallWatch, FakeClock]:
    clock = FakeClock()
    return StallWatch(Thresholds(quiet_s=quiet, gpu_idle_s=gpu_idle, llm_call_s=llm), clock), clock


def codes(w: StallWatch, active: bool = True) -> list[str]:
    return [a.code for a in w.due(active)]


def test_stalled_fires_once_clears_and_fires_again() -> None:
    w, clock = watch(quiet=60)
    clock.advance(59)
    assert codes(w) == []
    clock.advance(2)
    alarms = w.due(True)
    assert [(a.code, a.message, a.idle_s) for a in alarms] == [("stalled", "no event for 1m", 61)]
    clock.advance(30)
    assert codes(w) == []  # once per episode
    assert w.firing == {"stalled"}
    w.saw_event("tool.result")
    assert w.firing == set()
    clock.advance(61)
    assert codes(w) == ["stalled"]


def test_telemetry_and_warnings_do_not_count_as_events() -> None:
    w, clock = watch(quiet=60)
    for kind in ("resource", "gpu", "run.warning"):
        clock.advance(20)
        w.saw_event(kind)
    clock.advance(1)
    assert codes(w) == ["stalled"]


def test_gpu_idle_needs_a_command_and_gpu_samples() -> None:
    w, clock = watch(gpu_idle=120)
    w.command_started()
    clock.advance(200)
    assert codes(w) == []  # no GPU samples: not a GPU run
    w.gpu([90.0, None])
    clock.advance(119)
    w.gpu([1.0, 0.0])
    assert codes(w) == []
    clock.advance(1)
    alarms = w.due(True)
    assert [(a.code, a.message) for a in alarms] == [
        ("gpu_idle", "GPUs idle for 2m while a command runs")]
    clock.advance(60)
    assert codes(w) == []
    w.gpu([50.0])  # busy again: the episode ends
    clock.advance(119)
    assert codes(w) == []
    clock.advance(1)
    assert codes(w) == ["gpu_idle"]
    w.command_ended()
    clock.advance(600)
    assert codes(w) == []  # no command runs
    w.command_started()
    clock.advance(120)
    assert codes(w) == ["gpu_idle"]  # idle counts from the command's start


def test_llm_slow_fires_past_the_timeout_and_again_on_the_next_slow_call() -> None:
    w, clock = watch(llm=600)
    w.llm_started()
    clock.advance(599)
    assert codes(w) == []
    clock.advance(1)
    alarms = w.due(True)
    assert [(a.code, a.message) for a in alarms] == [
        ("llm_slow", "LLM call running for 10m, past its 10m timeout")]
    clock.advance(100)
    assert codes(w) == []
    w.llm_ended()
    clock.advance(1000)
    assert codes(w) == []
    w.llm_started()
    clock.advance(600)
    assert codes(w) == ["llm_slow"]


def test_nothing_fires_while_held_and_the_stop_does_not_count() -> None:
    w, clock = watch(quiet=60, gpu_idle=60, llm=60)
    w.gpu([0.0])
    w.command_started()
    w.llm_started()
    clock.advance(30)
    assert codes(w) == []
    assert codes(w, active=False) == []
    clock.advance(3600)
    assert codes(w, active=False) == []
    assert codes(w) == []  # back: every episode starts over
    clock.advance(59)
    assert codes(w) == []
    clock.advance(1)
    assert sorted(codes(w)) == ["gpu_idle", "llm_slow", "stalled"]
    assert codes(w, active=False) == []  # a hold ends the episodes
    assert w.firing == set()
    assert codes(w) == []
    clock.advance(60)
    assert sorted(codes(w)) == ["gpu_idle", "llm_slow", "stalled"]


def test_zero_turns_an_alarm_off_and_the_tick_follows_the_shortest() -> None:
    w, clock = watch()
    w.gpu([0.0])
    w.command_started()
    w.llm_started()
    clock.advance(10**6)
    assert codes(w) == []
    assert not Thresholds(0, 0, 0).any
    assert Thresholds().tick_s == 5.0
    assert Thresholds(quiet_s=1, gpu_idle_s=0, llm_call_s=0).tick_s == 0.2


def test_spans_read_short() -> None:
    assert [fmt_span(s) for s in (45, 61, 1800, 7500)] == ["45s", "1m", "30m", "2h05m"]
