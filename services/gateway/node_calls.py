"""Calls from the gateway to the fleet's node services for one request, within its deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from services.common.channels import ChannelPool
from services.common.errors import DeadlineExceeded, from_rpc_error
from services.common.fleet_state import ReplicaInfo
from services.common.transport import TensorExporter, TensorImporter


@dataclass
class NodeCalls:
    request_id: str
    deadline: float | None               # time.monotonic() value
    channels: ChannelPool
    exporter: TensorExporter
    importer: TensorImporter
    inline_max_bytes: int

    def timeout(self) -> float | None:
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("deadline passed before the request finished")
        return left

    def channel(self, replica: ReplicaInfo) -> grpc.Channel:
        return self.channels.get(replica.address)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", self.request_id),)

    def unary(self, what: str, method: Callable[..., Any], message: Any) -> Any:
        """``method(message)`` with the time left; a failure as a domain error naming ``what``."""
        try:
            return method(message, timeout=self.timeout(), metadata=self.metadata())
        except grpc.RpcError as err:
            raise from_rpc_error(err, what) from err
