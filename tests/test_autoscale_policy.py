"""The pure scaling policy, walked through whole flows on a fake clock, one tick per call.

Covers: a burst scales up within the up window (not before it); an empty queue
scales down only after the down window; a depth hovering at a boundary does not
flap (and would without stabilization); to zero only from one replica after the
idle window, and back from zero at the activation threshold; min/max clamps,
including a count someone set outside them; the hold right after start.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

from controller.policy import (
    ABOVE_MAX,
    ACTIVATE,
    BELOW_MIN,
    SCALE_DOWN,
    SCALE_TO_ZERO,
    SCALE_UP,
    WAIT_IDLE_WINDOW,
    WAIT_UP_WINDOW,
    PolicyContext,
    PolicyState,
    decide,
    recommend,
)
from controller.settings import NodeSettings


def node(**kw: object) -> NodeSettings:
    base: dict[str, object] = {
        "name": "den", "role": "denoiser", "model": "tiny", "min_replicas": 1, "max_replicas": 8,
        "target_depth_per_replica": 4, "tolerance": 0.1, "up_stabilization_s": 5,
        "down_stabilization_s": 30, "idle_to_zero_s": 60, "activation_threshold": 1}
    base.update(kw)
    return NodeSettings(**base)  # type: ignore[arg-type]


class Deployment:
    """Applies every decision at once, as if replicas started instantly; one tick per second."""

    def __init__(self, settings: NodeSettings, replicas: int, t0: float = 1000.0) -> None:
        self.settings = settings
        self.replicas = replicas
        self.now = t0
        self.state: PolicyState | None = None
        self.trace: list[tuple[float, int, str]] = []

    def tick(self, depth: int) -> int:
        desired, self.state = decide(PolicyContext(self.settings, depth, self.replicas,
                                                   self.now, self.state))
        self.trace.append((self.now, desired, self.state.reason))
        self.replicas = desired
        self.now += 1.0
        return desired

    def run(self, seconds: int, depth: int | Callable[[int], int]) -> list[int]:
        return [self.tick(depth(i) if callable(depth) else depth) for i in range(seconds)]

    def first_change(self, since: float) -> tuple[float, int, str]:
        before = None
        for t, desired, reason in self.trace:
            if t >= since and before is not None and desired != before:
                return t, desired, reason
            before = desired
        raise AssertionError(f"no change since {since}: {self.trace[-5:]}")


def test_burst_scales_up_when_the_up_window_has_passed_not_before() -> None:
    d = Deployment(node(), replicas=1)
    assert d.run(10, depth=0) == [1] * 10       # warmed up, quiet
    burst_at = d.now
    counts = d.run(10, depth=20)                 # 20 tasks / 4 per replica -> 5
    t, desired, reason = d.first_change(burst_at)
    assert (t - burst_at, desired, reason) == (5.0, 5, SCALE_UP)
    assert counts[:5] == [1] * 5 and counts[5:] == [5] * 5
    assert [r for _, _, r in d.trace[10:15]] == [WAIT_UP_WINDOW] * 5


def test_growing_burst_keeps_scaling_each_step_held_for_a_window() -> None:
    d = Deployment(node(up_stabilization_s=2), replicas=1)
    d.run(5, depth=0)
    counts = d.run(12, depth=lambda i: 8 if i < 6 else 28)  # wants 2, then 7
    assert counts == [1, 1, 2, 2, 2, 2, 2, 2, 7, 7, 7, 7]


def test_depth_back_to_zero_scales_down_only_after_the_down_window() -> None:
    d = Deployment(node(), replicas=5)
    d.run(40, depth=20)
    assert d.replicas == 5
    quiet_at = d.now
    counts = d.run(40, depth=0)
    t, desired, reason = d.first_change(quiet_at)
    assert (t - quiet_at, desired, reason) == (30.0, 1, SCALE_DOWN)
    assert counts[:30] == [5] * 30 and counts[30:] == [1] * 10  # min_replicas 1: never zero


def test_a_short_lull_inside_the_down_window_does_not_scale_down() -> None:
    d = Deployment(node(), replicas=5)
    d.run(40, depth=20)
    counts = d.run(60, depth=lambda i: 0 if i % 20 < 15 else 20)  # 15 s quiet, 5 s busy
    assert set(counts) == {5}


def test_depth_hovering_at_a_boundary_does_not_flap() -> None:
    # 8 tasks fit 2 replicas exactly, 9 ask for 3, 7 fit 2: jitter around the boundary.
    d = Deployment(node(), replicas=2)
    rng = random.Random(7)
    counts = d.run(300, depth=lambda i: rng.choice([7, 8, 9, 8, 9]))
    changes = [(a, b) for a, b in itertools.pairwise(counts) if a != b]
    assert len(changes) <= 1  # a long run of 9s may earn a third replica, once; never back


def test_without_stabilization_the_same_jitter_would_flap() -> None:
    """The control for the test above: with no windows and no tolerance the count moves."""
    d = Deployment(node(up_stabilization_s=0, down_stabilization_s=0, tolerance=0), replicas=2)
    rng = random.Random(7)
    counts = d.run(300, depth=lambda i: rng.choice([7, 8, 9, 8, 9]))
    changes = sum(1 for a, b in itertools.pairwise(counts) if a != b)
    assert changes > 50


def test_tolerance_band_holds_the_count_near_the_target() -> None:
    s = node(tolerance=0.25)
    assert recommend(s, depth=10, current=2) == 2    # 2.5 per replica ... 1.25x target
    assert recommend(s, depth=11, current=2) == 3    # 1.375x: outside the band
    assert recommend(s, depth=7, current=2) == 2     # 0.875x
    assert recommend(s, depth=5, current=2) == 2     # 0.625x, but ceil(5/4) is 2 anyway
    assert recommend(s, depth=4, current=3) == 1     # 0.33x


def test_to_zero_only_from_one_after_the_idle_window_and_back_at_activation() -> None:
    s = node(min_replicas=0, down_stabilization_s=10, idle_to_zero_s=20, activation_threshold=3,
             up_stabilization_s=2)
    d = Deployment(s, replicas=4)
    d.run(30, depth=16)
    quiet_at = d.now
    d.run(45, depth=0)
    t1, n1, r1 = d.first_change(quiet_at)
    t2, n2, r2 = d.first_change(t1 + 1)
    assert (t1 - quiet_at, n1, r1) == (10.0, 1, SCALE_DOWN)       # down window, to one
    # The idle clock starts at the first tick that sees one replica, one tick after t1.
    assert (t2 - t1, n2, r2) == (21.0, 0, SCALE_TO_ZERO)
    assert WAIT_IDLE_WINDOW in [r for t, _, r in d.trace if t1 < t < t2]
    assert d.run(20, depth=2) == [0] * 20                         # below the activation threshold
    woke_at = d.now
    counts = d.run(5, depth=3)
    t3, n3, r3 = d.first_change(woke_at)
    assert (t3 - woke_at, n3, r3) == (2.0, 1, ACTIVATE)
    assert counts == [0, 0, 1, 1, 1]


def test_from_zero_a_big_burst_goes_straight_to_what_it_needs() -> None:
    d = Deployment(node(min_replicas=0, up_stabilization_s=0), replicas=0)
    assert d.run(2, depth=30) == [8, 8]  # 30/4 -> 8 = max


def test_work_in_flight_keeps_the_last_replica_and_restarts_the_idle_clock() -> None:
    d = Deployment(node(min_replicas=0, idle_to_zero_s=10, down_stabilization_s=0), replicas=1)
    counts = d.run(60, depth=lambda i: 1 if i % 8 == 0 else 0)  # a task every 8 s
    assert set(counts) == {1}


def test_never_more_than_max_never_fewer_than_min() -> None:
    s = node(min_replicas=2, max_replicas=6, up_stabilization_s=0, down_stabilization_s=0)
    d = Deployment(s, replicas=2)
    rng = random.Random(3)
    counts = d.run(500, depth=lambda i: rng.choice([0, 0, 1, 5, 40, 1000]))
    assert min(counts) == 2 and max(counts) == 6


def test_a_count_set_outside_the_bounds_is_pulled_back_at_once() -> None:
    s = node(min_replicas=2, max_replicas=6)
    desired, state = decide(PolicyContext(s, depth=0, current=12, now=0.0))
    assert (desired, state.reason) == (6, ABOVE_MAX)
    desired, state = decide(PolicyContext(s, depth=0, current=0, now=0.0))
    assert (desired, state.reason) == (2, BELOW_MIN)


def test_right_after_start_the_count_is_held_until_a_window_is_covered() -> None:
    d = Deployment(node(up_stabilization_s=5), replicas=1)
    counts = d.run(7, depth=40)
    assert counts == [1, 1, 1, 1, 1, 8, 8]


def test_scale_down_goes_to_the_largest_count_seen_in_the_window() -> None:
    d = Deployment(node(down_stabilization_s=10), replicas=6)
    d.run(15, depth=24)                                  # 6 replicas busy
    counts = d.run(25, depth=lambda i: 12 if i < 5 else 4)  # wants 3, then 1
    assert counts[9] == 6 and counts[10] == 3            # 3 held for 10 s
    assert counts[-1] == 1
