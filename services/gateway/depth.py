"""Queue depth per model node, as one request moves through its graph.

A request counts on a node from the moment it waits for that node until the
node's task for it is done: on the text encoder until its prompts are
encoded, on the denoiser and its ControlNets until denoising ends, on the VAE
only while an encode or decode is asked of it. So a burst of ControlNet
requests raises the ControlNet and denoiser depths, not every node's.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from services.common.fleet_state import FleetState

log = logging.getLogger("dfleet.gateway")


class DepthTracker:
    def __init__(self, fleet: FleetState) -> None:
        self.fleet = fleet
        self.held: Counter[tuple[str, str]] = Counter()

    def enter(self, role: str, model: str) -> None:
        self.fleet.add_depth(role, model, 1)
        self.held[(role, model)] += 1

    def leave(self, role: str, model: str) -> None:
        if self.held[(role, model)] <= 0:
            return
        self.held[(role, model)] -= 1
        self.fleet.add_depth(role, model, -1)

    @contextmanager
    def holding(self, nodes: list[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
        """Counts the request on each (role, model) node for the time of the block; yields
        the nodes held, for :meth:`move`."""
        entered: list[tuple[str, str]] = []
        try:
            for role, model in nodes:
                self.enter(role, model)
                entered.append((role, model))
            yield entered
        finally:
            for role, model in entered:
                self.leave(role, model)

    def move(self, held: list[tuple[str, str]], old: tuple[str, str],
             new: tuple[str, str]) -> None:
        """Counts the request on ``new`` instead of ``old`` for the rest of the holding block
        whose nodes are ``held`` (placement moved it: ``auto`` chose the slimmed tier)."""
        self.enter(*new)
        held.append(new)
        held.remove(old)
        self.leave(*old)

    def close(self) -> None:
        """Gives back every count still held, whatever ended the request."""
        for (role, model), count in list(self.held.items()):
            for _ in range(count):
                try:
                    self.leave(role, model)
                except Exception:  # noqa: BLE001 - Redis away: log; the count stays off by one
                    log.warning("could not lower queue depth of %s:%s", role, model,
                                exc_info=True)
                    return
