"""The subscriber's per-run seq tracker: contiguous point, gaps, grace, retries, bounds."""

from __future__ import annotations

from runner.seq_tracker import SeqTracker


def feed(t: SeqTracker, run: str, seqs: list[int], now: float = 0.0) -> None:
    for s in seqs:
        t.observe(run, s, now)


def test_in_order_and_duplicates_leave_no_gap() -> None:
    t = SeqTracker()
    feed(t, "r", [1, 2, 3, 3, 2, 4])
    st = t.get("r")
    assert st is not None and st.contiguous == 4 and st.ahead == []
    assert t.gaps == [] and t.due(100.0) == []


def test_out_of_order_within_the_grace_is_not_asked_for() -> None:
    t = SeqTracker(grace=0.5)
    feed(t, "r", [1, 3], now=10.0)
    assert t.gaps == ["r"]
    assert t.due(10.2) == []  # still within the grace
    t.observe("r", 2, 10.3)
    st = t.get("r")
    assert st is not None and st.contiguous == 3 and t.gaps == []
    assert t.due(20.0) == []


def test_a_gap_is_asked_for_after_the_grace_then_again_with_backoff() -> None:
    t = SeqTracker(grace=0.5, retry_min=2.0, retry_max=5.0)
    feed(t, "r", [1, 2, 7, 8], now=0.0)
    assert t.due(0.4) == []
    assert t.due(0.6) == [("r", 3, 6)]
    assert t.due(1.0) == []  # asked: wait the backoff
    assert t.due(2.7) == [("r", 3, 6)]
    assert t.due(5.0) == []  # the backoff doubled to 4
    assert t.due(6.8) == [("r", 3, 6)]
    assert t.due(11.9) == [("r", 3, 6)]  # capped at retry_max
    st = t.get("r")
    assert st is not None and st.requests == 4


def test_a_gap_filled_closes_it_and_the_next_hole_starts_its_own_grace() -> None:
    t = SeqTracker(grace=0.5)
    feed(t, "r", [1, 5, 9], now=0.0)
    assert t.due(1.0) == [("r", 2, 4)]
    feed(t, "r", [2, 3, 4], now=2.0)
    st = t.get("r")
    assert st is not None and st.contiguous == 5 and t.gaps == ["r"]
    assert t.due(2.2) == []
    assert t.due(2.6) == [("r", 6, 8)]
    feed(t, "r", [6, 7, 8], now=3.0)
    assert st.contiguous == 9 and t.gaps == [] and t.due(100.0) == []


def test_a_run_first_seen_mid_way_is_asked_from_seq_1_only_when_tracking_from_the_start() -> None:
    whole, viewer = SeqTracker(grace=0.0), SeqTracker(grace=0.0, from_start=False)
    feed(whole, "r", [40, 41])
    feed(viewer, "r", [40, 41])
    assert whole.due(1.0) == [("r", 1, 39)]
    assert viewer.due(1.0) == [] and viewer.gaps == []


def test_seed_and_a_missed_tail() -> None:
    t = SeqTracker(grace=0.0)
    t.seed("r", 10)
    t.observe("r", 11, 0.0)
    assert t.gaps == []
    t.expect("r", 15, 1.0)  # the owner is at 15: 12..15 were missed
    assert t.due(1.0) == [("r", 12, 15)]
    feed(t, "r", [12, 13, 14, 15], now=2.0)
    st = t.get("r")
    assert st is not None and st.contiguous == 15 and t.gaps == []


def test_memory_is_bounded_per_run_and_in_runs() -> None:
    t = SeqTracker(grace=0.0, max_ranges=4, max_runs=3)
    feed(t, "r", list(range(3, 2000, 2)))  # every other seq: a thousand holes
    st = t.get("r")
    assert st is not None and len(st.ahead) == 4 and st.ahead[0] == (3, 3)
    assert t.due(1.0) == [("r", 1, 2)]
    for i in range(10):
        t.observe(f"run-{i}", 1, 0.0)
    assert len(t) == 3 and t.get("r") is None and t.get("run-9") is not None


def test_a_missed_tail_is_asked_for_through_the_owners_last_seq_and_closes_with_it() -> None:
    t = SeqTracker(grace=0.5)
    feed(t, "r", list(range(1, 41)), now=0.0)
    t.expect("r", 40, 1.0)  # the owner is where we are: nothing missing
    assert t.gaps == [] and t.due(10.0) == []
    t.expect("r", 55, 1.0)
    assert t.gaps == ["r"] and t.due(1.2) == []  # within the grace
    assert t.due(1.6) == [("r", 41, 55)]
    t.expect("r", 50, 2.0)  # an older word from the owner changes nothing
    feed(t, "r", list(range(41, 50)), now=3.0)
    assert t.due(3.2) == []  # each arrival gives the rest its grace again
    assert t.due(3.6) == [("r", 50, 55)]
    feed(t, "r", list(range(50, 56)), now=4.0)
    st = t.get("r")
    assert st is not None and st.contiguous == 55 and t.gaps == [] and t.due(100.0) == []


def test_the_owners_word_on_a_run_not_seen_starts_it_only_when_tracking_from_the_start() -> None:
    whole, viewer = SeqTracker(grace=0.0), SeqTracker(grace=0.0, from_start=False)
    whole.expect("r", 7, 0.0)
    viewer.expect("r", 7, 0.0)
    assert whole.due(1.0) == [("r", 1, 7)]
    assert viewer.get("r") is None and viewer.gaps == [] and viewer.due(1.0) == []


def test_seeding_past_a_hole_closes_it() -> None:
    t = SeqTracker(grace=0.0)
    feed(t, "r", [1, 2, 9], now=0.0)
    t.expect("r", 12, 0.0)
    assert t.gaps == ["r"]
    t.seed("r", 9)  # what a local copy filled from elsewhere
    assert t.due(1.0) == [("r", 10, 12)]
    t.seed("r", 12)
    assert t.gaps == [] and t.due(2.0) == []
