"""Scales model nodes through the Kubernetes API: ``apps/v1`` ``deployments/scale``.

Reads a Deployment's scale subresource, patches ``spec.replicas``, and records one
core/v1 Event on the Deployment per change (``kubectl describe deployment`` and
``kubectl get events`` show why it scaled). It needs exactly what the chart's Role
grants: get/patch on ``deployments/scale`` and create on ``events``.
"""

from __future__ import annotations

import datetime
import logging
import socket
import time

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from controller.scaler import Decision, ReplicaCount, ScalerUnavailable
from controller.settings import NodeSettings

log = logging.getLogger("dfleet.controller.kubernetes")

COMPONENT = "dfleet-controller"
_API_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError)


def _event_reason(reason: str) -> str:
    return "".join(part.capitalize() for part in reason.split("_"))


class KubernetesScaler:
    """A :class:`controller.scaler.Scaler` over one API client."""

    def __init__(self, api: client.ApiClient, request_timeout_s: float = 5.0,
                 record_events: bool = True) -> None:
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.request_timeout_s = request_timeout_s
        self.record_events = record_events
        self.instance = socket.gethostname()

    @classmethod
    def connect(cls, kubeconfig: str | None = None, in_cluster: bool = False,
                context: str | None = None, **kwargs: float | bool) -> KubernetesScaler:
        """In-cluster service account, or a kubeconfig file (default ``~/.kube/config``)."""
        cfg = client.Configuration()
        if in_cluster:
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=kubeconfig, context=context,
                                    client_configuration=cfg)
        # A down API server should cost one tick, not urllib3's three retries per call.
        cfg.retries = 1
        return cls(client.ApiClient(cfg), **kwargs)  # type: ignore[arg-type]

    def replicas(self, node: NodeSettings, namespace: str) -> ReplicaCount:
        try:
            scale = self.apps.read_namespaced_deployment_scale(
                node.deployment, namespace, _request_timeout=self.request_timeout_s)
        except _API_ERRORS as exc:
            raise ScalerUnavailable(
                f"read {namespace}/{node.deployment} scale: {_describe(exc)}") from exc
        spec = int(scale.spec.replicas or 0) if scale.spec else 0
        ready = int(scale.status.replicas or 0) if scale.status else 0
        return ReplicaCount(spec=spec, ready=ready)

    def scale(self, decision: Decision) -> None:
        node, namespace = decision.node, decision.namespace
        try:
            self.apps.patch_namespaced_deployment_scale(
                node.deployment, namespace, {"spec": {"replicas": decision.desired}},
                _request_timeout=self.request_timeout_s)
        except _API_ERRORS as exc:
            raise ScalerUnavailable(
                f"patch {namespace}/{node.deployment} scale: {_describe(exc)}") from exc
        if self.record_events:
            self._record_event(decision)

    def _record_event(self, decision: Decision) -> None:
        node, namespace = decision.node, decision.namespace
        now = datetime.datetime.now(datetime.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{node.deployment}.{time.time_ns():x}",
                                         namespace=namespace,
                                         labels={"app.kubernetes.io/managed-by": COMPONENT}),
            involved_object=client.V1ObjectReference(
                api_version="apps/v1", kind="Deployment", name=node.deployment,
                namespace=namespace),
            reason=_event_reason(decision.reason), message=decision.message(), type="Normal",
            source=client.V1EventSource(component=COMPONENT, host=self.instance),
            reporting_component=COMPONENT, reporting_instance=self.instance,
            first_timestamp=now, last_timestamp=now, count=1)
        try:
            self.core.create_namespaced_event(namespace, event,
                                              _request_timeout=self.request_timeout_s)
        except _API_ERRORS as exc:
            # The scale already happened; a lost Event must not undo or repeat it.
            log.warning("could not record event for %s/%s: %s", namespace, node.deployment,
                        _describe(exc))


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
