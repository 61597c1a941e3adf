"""The replay window: which command ids count as sent twice, for how long, and what it costs in memory."""

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from bridge.api.replay import ReplayWindow

SPAN = 240  # twice the default clock_skew of 120 s


def window(start=1_700_000_000.5):
    clock = Clock()
    clock.advance(start)
    return clock, ReplayWindow(clock, SPAN)


def test_an_id_is_refused_the_second_time_for_the_same_client_only():
    clock, seen = window()
    assert seen.first_time("cl_a", "m1")
    assert not seen.first_time("cl_a", "m1")
    assert seen.first_time("cl_b", "m1")
    assert seen.first_time("cl_a", "m2")
    assert len(seen) == 3


def test_an_id_is_remembered_for_the_whole_span_then_forgotten():
    clock, seen = window()
    assert seen.first_time("cl_a", "m1")
    clock.advance(SPAN - 0.01)
    assert not seen.first_time("cl_a", "m1")
    clock.advance(2.5)  # past the span by more than the whole second entries are rounded to
    assert seen.first_time("cl_a", "m1")


def test_forgetting_keeps_the_newer_entries():
    clock, seen = window()
    for n in range(100):
        assert seen.first_time("cl_a", f"old{n}")
    clock.advance(SPAN / 2)
    assert seen.first_time("cl_a", "new")
    clock.advance(SPAN / 2 + 2)
    assert seen.first_time("cl_a", "trigger")  # forgets the old ones on the way
    assert len(seen) == 2
    assert not seen.first_time("cl_a", "new")


def test_the_client_and_command_ids_cannot_be_shifted_into_each_other():
    clock, seen = window()
    assert seen.first_time("cl_a", "bc")
    assert seen.first_time("cl_ab", "c")
    assert seen.first_time("cl_a\0", "bc")


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["cl_a", "cl_b", "cl_é"]), st.text(min_size=1, max_size=40)),
                max_size=60))
def test_it_says_first_time_exactly_for_pairs_not_seen_before(pairs):
    clock, seen = window()
    before = set()
    for pair in pairs:
        assert seen.first_time(*pair) == (pair not in before)
        before.add(pair)


def test_an_entry_costs_under_120_bytes():
    """A client at the default rate limit fills the window with 12 000 ids per connection (50/s for 240 s);
    64 connections doing so held about 150 MB when each id kept its strings."""
    clock, seen = window()
    count = 20_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(count):
            if n % 100 == 0:
                clock.advance(0.5)
            # made here, like the id parsed out of each message: kept only if the window keeps it
            seen.first_time("cl_pos_1", f"{n:08d}-5b0e-4c39-9d5c-2c1f0e7a9b41")
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(seen) == count
    assert used / count < 120, used / count
