"""The controller loop: each tick, read the fleet, decide per node, scale, log, export.

A failed read of Redis skips the tick (no count changes on stale data); a failed
scaler call skips that node. Both are logged, counted and retried next tick, so
the loop outlives outages of either. Desired counts always lie within min/max:
the policy clamps, and the loop checks again before it hands a count to a scaler.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from controller.metrics import ControllerMetrics
from controller.policy import PolicyContext, PolicyState, decide
from controller.scaler import Decision, Scaler, ScalerUnavailable
from controller.settings import ControllerSettings, NodeSettings
from controller.sources import DepthSource, FleetSnapshot, SourceUnavailable

log = logging.getLogger("dfleet.controller")


class Controller:
    """Scales every node of ``settings`` with ``scaler`` from what ``source`` reads."""

    def __init__(self, settings: ControllerSettings, source: DepthSource, scaler: Scaler,
                 metrics: ControllerMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.source = source
        self.scaler = scaler
        self.metrics = metrics or ControllerMetrics()
        self.clock = clock
        self.states: dict[str, PolicyState] = {}
        self._last_logged: dict[str, tuple[int, str]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self, now: float | None = None) -> list[Decision]:
        """One pass over every node; returns the decisions applied (none if Redis failed)."""
        now = self.clock() if now is None else now
        try:
            snapshot = self.source.read(n.role for n in self.settings.nodes)
        except SourceUnavailable as exc:
            self.metrics.source_errors.inc()
            log.warning(json.dumps({"event": "source_unavailable", "error": str(exc)}))
            return []
        decisions = []
        for node in self.settings.nodes:
            decision = self._tick_node(node, snapshot, now)
            if decision is not None:
                decisions.append(decision)
        return decisions

    def _tick_node(self, node: NodeSettings, snapshot: FleetSnapshot,
                   now: float) -> Decision | None:
        namespace = self.settings.namespace_of(node)
        try:
            count = self.scaler.replicas(node, namespace)
        except ScalerUnavailable as exc:
            self._scaler_failed(node, "read", exc)
            return None
        depth = snapshot.depth(node.queues)
        desired, state = decide(PolicyContext(node, depth, count.spec, now,
                                              self.states.get(node.name)))
        if not node.min_replicas <= desired <= node.max_replicas:
            raise AssertionError(f"policy chose {desired} outside {node.min_replicas}.."
                                 f"{node.max_replicas} for {node.name}")
        decision = Decision(node=node, namespace=namespace, depth=depth, current=count.spec,
                            desired=desired, recommendation=state.recommendation,
                            reason=state.reason)
        if decision.changes:
            try:
                self.scaler.scale(decision)
            except ScalerUnavailable as exc:
                # Keep the old state: the next tick decides again from the same history.
                self._scaler_failed(node, "scale", exc)
                return None
            self.metrics.scalings.labels(node.role, node.model).inc()
        self.states[node.name] = state
        self.metrics.record(decision, actual=count.ready,
                            live=snapshot.live(node.role, node.model))
        self._log(decision)
        return decision

    def _scaler_failed(self, node: NodeSettings, action: str, exc: Exception) -> None:
        self.metrics.scaler_errors.labels(node.role, node.model).inc()
        log.warning(json.dumps({"event": "scaler_unavailable", "node": node.name,
                                "action": action, "error": str(exc)}))

    def _log(self, decision: Decision) -> None:
        # Every change and every change of reason at INFO; repeats of the same one at DEBUG.
        key = (decision.desired, decision.reason)
        level = logging.INFO if decision.changes or self._last_logged.get(
            decision.node.name) != key else logging.DEBUG
        self._last_logged[decision.node.name] = key
        log.log(level, json.dumps({"event": "decision", **decision.as_log_dict()}))

    def run(self, max_ticks: int | None = None) -> None:
        """Ticks every ``tick_s`` until :meth:`stop` (or ``max_ticks``); a tick's own
        duration is not added to the interval."""
        next_at = self.clock()
        ticks = 0
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("tick failed")
            ticks += 1
            if max_ticks is not None and ticks >= max_ticks:
                return
            next_at += self.settings.tick_s
            self._stop.wait(max(0.0, next_at - self.clock()))
            next_at = max(next_at, self.clock() - self.settings.tick_s)

    def start(self) -> Controller:
        """Runs :meth:`run` on a daemon thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="dfleet-controller", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
