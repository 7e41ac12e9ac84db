"""The interface every scaler implements, and the decision record it is handed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from controller.settings import NodeSettings


class ScalerUnavailable(RuntimeError):
    """The scaler's backend (the Kubernetes API, a process) failed this tick; retryable."""


@dataclass(frozen=True)
class ReplicaCount:
    """``spec``: the count last set (a Deployment's ``spec.replicas``); ``ready``: running now."""

    spec: int
    ready: int


@dataclass(frozen=True)
class Decision:
    """One tick's outcome for one node, as logged and recorded."""

    node: NodeSettings
    namespace: str
    depth: int
    current: int
    desired: int
    recommendation: int
    reason: str

    @property
    def changes(self) -> bool:
        return self.desired != self.current

    def message(self) -> str:
        return (f"{self.node.name}: {self.current} -> {self.desired} replicas ({self.reason}; "
                f"queue depth {self.depth}, target {self.node.target_depth_per_replica:g} "
                f"per replica, recommended {self.recommendation})")

    def as_log_dict(self) -> dict[str, object]:
        return {"node": self.node.name, "role": self.node.role, "model": self.node.model,
                "namespace": self.namespace, "deployment": self.node.deployment,
                "depth": self.depth, "current": self.current, "desired": self.desired,
                "recommendation": self.recommendation, "reason": self.reason}


class Scaler(Protocol):
    def replicas(self, node: NodeSettings, namespace: str) -> ReplicaCount:
        """The node's current count; raises ScalerUnavailable."""
        ...

    def scale(self, decision: Decision) -> None:
        """Sets the node's count to ``decision.desired``; raises ScalerUnavailable."""
        ...
