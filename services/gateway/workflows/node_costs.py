"""How long a workflow's nodes other than the denoise node take: admission adds them to the
denoise node's estimate.

Per (operator, model), the median of the last few durations this gateway measured; a node
not measured yet counts its operator's default.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque

from services.gateway.workflows.spec import Node, Operator

KEPT = 9
DEFAULT_MS = {Operator.TEXT_ENCODE: 10.0, Operator.IMAGE_ENCODE: 10.0,
              Operator.VAE_ENCODE: 20.0, Operator.VAE_DECODE: 20.0,
              Operator.LATENT_INIT: 0.0, Operator.AR_EMBED: 50.0,
              Operator.EMBED_ADAPTER: 2.0, Operator.DENOISE: 0.0}


class NodeCosts:
    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def observe(self, operator: Operator, model: str, ms: float) -> None:
        with self._lock:
            self._seen.setdefault((operator, model), deque(maxlen=KEPT)).append(ms)

    def node_ms(self, node: Node) -> float:
        with self._lock:
            seen = self._seen.get((node.operator, node.model))
            return statistics.median(seen) if seen else DEFAULT_MS[node.operator]

    def graph_ms(self, nodes: list[Node]) -> float:
        """The nodes' time if run one after another (the concurrent ones overlap: an upper
        bound)."""
        return sum(self.node_ms(n) for n in nodes)
