"""The scaling decision for one model node: a pure function of its inputs, time passed in.

``decide(ctx) -> (desired, state)`` takes the node's queue depth, its current replica
count, the time and the state the previous call returned, and returns the replica
count to set and the state to pass next time. It does no I/O, so tests walk whole
flows on a fake clock, one tick per call.

The steps, each a small function below:

1. **Recommend** a count from the depth alone: ``ceil(depth / target_depth_per_replica)``;
   left at the current count while the load per replica is within ``tolerance`` of the
   target; never below one while replicas run (zero is the idle rule's call); from zero
   only once the depth reaches ``activation_threshold``. Clamped to min/max.
2. **Stabilize** (the Kubernetes HPA's rule): scale up to the *smallest* count
   recommended during the last ``up_stabilization_s``, scale down to the *largest* one
   recommended during the last ``down_stabilization_s``. A count moves only once every
   recommendation in its window agrees on the direction, so a depth hovering at a
   boundary never flaps. Right after the controller starts, before a window is
   covered by its own history, the count is held.
3. **Scale to zero** only from one replica, after the depth has been zero (and the
   count one) for ``idle_to_zero_s``, and only when ``min_replicas`` is 0.
4. A current count outside min/max is pulled back at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.settings import NodeSettings

# Reasons, as logged and recorded in Events.
BELOW_MIN = "below_min"
ABOVE_MAX = "above_max"
SCALE_UP = "scale_up"
SCALE_DOWN = "scale_down"
ACTIVATE = "activate"
SCALE_TO_ZERO = "scale_to_zero"
WAIT_UP_WINDOW = "wait_up_window"
WAIT_DOWN_WINDOW = "wait_down_window"
WAIT_IDLE_WINDOW = "wait_idle_window"
STEADY = "steady"


@dataclass(frozen=True)
class PolicyState:
    """What one call hands the next. ``reason`` and ``recommendation`` describe this call."""

    started_at: float
    history: tuple[tuple[float, int], ...] = ()
    idle_since: float | None = None
    reason: str = STEADY
    recommendation: int = 0


@dataclass(frozen=True)
class PolicyContext:
    """Inputs of one decision. ``state`` is None on the first call for a node."""

    settings: NodeSettings
    depth: int
    current: int
    now: float
    state: PolicyState | None = None


def recommend(s: NodeSettings, depth: int, current: int) -> int:
    """The count the depth alone asks for (step 1), before any delay."""
    # The epsilon keeps 3 / 0.3 = 10.000000000000002 from asking for 11 replicas.
    needed = math.ceil(depth / s.target_depth_per_replica - 1e-9)
    if current == 0:
        wanted = max(1, needed) if depth >= s.activation_threshold else 0
    elif depth > 0 and abs(depth / (current * s.target_depth_per_replica) - 1.0) <= s.tolerance:
        wanted = current
    else:
        wanted = max(1, needed)
    return min(max(wanted, s.min_replicas), s.max_replicas)


def _window(history: tuple[tuple[float, int], ...], now: float, seconds: float) -> list[int]:
    return [rec for t, rec in history if t >= now - seconds]


def _stabilize(s: NodeSettings, state: PolicyState, history: tuple[tuple[float, int], ...],
               current: int, now: float) -> tuple[int, str]:
    rec = history[-1][1]
    if rec > current:
        if now - state.started_at < s.up_stabilization_s:
            return current, WAIT_UP_WINDOW
        held = min(_window(history, now, s.up_stabilization_s))
        if held <= current:
            return current, WAIT_UP_WINDOW
        return held, ACTIVATE if current == 0 else SCALE_UP
    if rec < current:
        if now - state.started_at < s.down_stabilization_s:
            return current, WAIT_DOWN_WINDOW
        held = max(_window(history, now, s.down_stabilization_s))
        if held >= current:
            return current, WAIT_DOWN_WINDOW
        return held, SCALE_DOWN
    return current, STEADY


def _idle_since(s: NodeSettings, state: PolicyState, depth: int, current: int,
                now: float) -> float | None:
    if s.min_replicas > 0 or depth > 0 or current != 1:
        return None
    return now if state.idle_since is None else state.idle_since


def decide(ctx: PolicyContext) -> tuple[int, PolicyState]:
    """Returns the replica count to set now and the state for the next call."""
    s, now, current = ctx.settings, ctx.now, ctx.current
    depth = max(0, ctx.depth)
    state = ctx.state or PolicyState(started_at=now)
    rec = recommend(s, depth, current)
    keep = max(s.up_stabilization_s, s.down_stabilization_s)
    history = tuple((t, r) for t, r in state.history if t >= now - keep) + ((now, rec),)
    idle_since = _idle_since(s, state, depth, current, now)

    if current < s.min_replicas:
        desired, reason = s.min_replicas, BELOW_MIN
    elif current > s.max_replicas:
        desired, reason = s.max_replicas, ABOVE_MAX
    elif idle_since is not None:
        if now - idle_since >= s.idle_to_zero_s:
            desired, reason = 0, SCALE_TO_ZERO
        else:
            desired, reason = 1, WAIT_IDLE_WINDOW
    else:
        desired, reason = _stabilize(s, state, history, current, now)

    desired = min(max(desired, s.min_replicas), s.max_replicas)
    return desired, PolicyState(started_at=state.started_at, history=history,
                                idle_since=idle_since, reason=reason, recommendation=rec)
