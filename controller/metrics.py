"""The controller's Prometheus metrics, on their own registry so tests can build many."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from controller.scaler import Decision

_NODE = ("role", "model")


class ControllerMetrics:
    """Depth, desired, actual and live replicas per node; errors per source of failure."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("dfleet_controller_queue_depth",
                                 "Queue depth (tasks waiting + running) of the model node",
                                 _NODE, registry=r)
        self.desired = Gauge("dfleet_controller_desired_replicas",
                             "Replica count the policy chose this tick", _NODE, registry=r)
        self.actual = Gauge("dfleet_controller_actual_replicas",
                            "Replicas the scaler reports running", _NODE, registry=r)
        self.live = Gauge("dfleet_controller_live_replicas",
                          "Replicas heartbeating in Redis", _NODE, registry=r)
        self.scalings = Counter("dfleet_controller_scalings_total",
                                "Replica count changes the controller made", _NODE, registry=r)
        self.source_errors = Counter("dfleet_controller_source_errors_total",
                                     "Ticks whose Redis read failed", registry=r)
        self.scaler_errors = Counter("dfleet_controller_scaler_errors_total",
                                     "Scaler calls that failed", _NODE, registry=r)
        self._server: object | None = None

    def record(self, decision: Decision, actual: int, live: int) -> None:
        labels = (decision.node.role, decision.node.model)
        self.queue_depth.labels(*labels).set(decision.depth)
        self.desired.labels(*labels).set(decision.desired)
        self.actual.labels(*labels).set(actual)
        self.live.labels(*labels).set(live)

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serves ``/metrics`` on ``port`` (0 picks one); returns the bound port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # type: ignore[attr-defined]
            self._server.server_close()  # type: ignore[attr-defined]
            self._server = None
