"""The TensorLeases gRPC service: consumers hand leases back to the exporter that granted them."""

from __future__ import annotations

import grpc

from diffusion.v1 import tensor_pb2, tensor_pb2_grpc
from services.common.transport.exporter import TensorExporter


class TensorLeasesServicer(tensor_pb2_grpc.TensorLeasesServicer):
    """Wraps one TensorExporter.

    ``lease_ids`` are released one by one (unknown ids are a counted no-op). A request with no
    lease ids but a ``request_id`` releases every lease of that request, for a caller that
    abandons a request without the refs at hand.
    """

    def __init__(self, exporter: TensorExporter) -> None:
        self._exporter = exporter

    def Release(
        self, request: tensor_pb2.ReleaseRequest, context: grpc.ServicerContext
    ) -> tensor_pb2.ReleaseResponse:
        if request.lease_ids:
            released = self._exporter.release(request.lease_ids)
        elif request.request_id:
            released = self._exporter.release_request(request.request_id)
        else:
            released = 0
        return tensor_pb2.ReleaseResponse(released=released)


def add_tensor_leases(server: grpc.Server, exporter: TensorExporter) -> TensorLeasesServicer:
    """Host ``exporter``'s TensorLeases service on ``server``."""
    servicer = TensorLeasesServicer(exporter)
    tensor_pb2_grpc.add_TensorLeasesServicer_to_server(servicer, server)
    return servicer
