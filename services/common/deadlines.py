"""The time a call has left, from its gRPC context, with "no deadline" kept as such.

A caller that sets no deadline (grpcurl, most Go/Java clients, ``dfleet.Client(timeout=None)``)
reaches a Python server with ``context.time_remaining()`` of about 9.2e18 seconds. Passed on
as the next hop's timeout, that figure overflows and the hop fails at once with
DEADLINE_EXCEEDED; so every service reads its deadline here, and a hop is given a timeout
only when its caller had one.
"""

from __future__ import annotations

import time
from typing import Protocol

# Far beyond any real request (about 31 years): the figure gRPC reports for "no deadline".
NO_DEADLINE_S = 1e9


class HasTimeRemaining(Protocol):
    def time_remaining(self) -> float | None: ...


def time_left(context: HasTimeRemaining) -> float | None:
    """Seconds until the caller's deadline, or None when the caller set none."""
    remaining = context.time_remaining()
    if remaining is None or remaining >= NO_DEADLINE_S:
        return None
    return max(0.0, remaining)


def deadline_of(context: HasTimeRemaining, max_s: float = 0.0) -> float | None:
    """The call's deadline as a ``time.monotonic()`` value; ``max_s`` > 0 caps it (and gives
    one to a caller that set none). None: no deadline at all."""
    left = time_left(context)
    if max_s > 0:
        left = max_s if left is None else min(left, max_s)
    return None if left is None else time.monotonic() + left


def seconds_from_now(max_s: float) -> float | None:
    """The deadline of work no caller waits for (a recovered request): ``max_s`` from now,
    or none when ``max_s`` is 0."""
    return time.monotonic() + max_s if max_s > 0 else None

