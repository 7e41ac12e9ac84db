"""Typed errors of the SDK, one class per gRPC status the fleet uses.

A request fails in one of two ways and both end here: the RPC itself ends with a
status (validation, deadline, unreachable fleet), or the stream carries an
``ErrorInfo`` event after the request was accepted. The offending field comes
from the event's ``field``, the trailing metadata key :data:`FIELD_METADATA_KEY`,
or a ``"<field>: "`` prefix of the status message, in that order.
"""

from __future__ import annotations

import re
from typing import Any

import grpc

from diffusion.v1 import gateway_pb2

FIELD_METADATA_KEY = "dfleet-field"
REQUEST_ID_METADATA_KEY = "dfleet-request-id"

_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
_FIELD_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE)
# Gateways write "<field>: <message>" when a field is to blame, e.g. "loras[0].name: unknown".
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?(?:\.[A-Za-z_][A-Za-z0-9_]*"
                           r"(?:\[\d+\])?)*): ")


class FleetError(Exception):
    """A request the fleet refused or could not finish."""

    default_code = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode | None = None, message: str = "", field: str = "",
                 request_id: str = "") -> None:
        self.code = code or self.default_code
        self.message = message
        self.field = field
        self.request_id = request_id
        super().__init__(str(self))

    @property
    def code_name(self) -> str:
        """The status name, e.g. ``INVALID_ARGUMENT``."""
        return str(self.code.name)

    def __str__(self) -> str:
        where = f" [field {self.field}]" if self.field and self.field not in self.message else ""
        return f"{self.code_name}: {self.message}{where}"


class InvalidArgument(FleetError):
    default_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(FleetError):
    default_code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(FleetError):
    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(FleetError):
    default_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(FleetError):
    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(FleetError):
    default_code = grpc.StatusCode.CANCELLED


class Internal(FleetError):
    default_code = grpc.StatusCode.INTERNAL


_CLASSES: dict[grpc.StatusCode, type[FleetError]] = {
    cls.default_code: cls
    for cls in (InvalidArgument, NotFound, ResourceExhausted, Unavailable, DeadlineExceeded,
                Cancelled, Internal)
}


def status_code(value: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a numeric code (``UNKNOWN`` for values gRPC lacks)."""
    return _CODES_BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


def fleet_error(code: grpc.StatusCode, message: str, field: str = "",
                request_id: str = "") -> FleetError:
    """The most specific :class:`FleetError` subclass for ``code``."""
    cls = _CLASSES.get(code, FleetError)
    return cls(code, message, field, request_id)


def _metadata_value(metadata: Any, key: str) -> str:
    for item in metadata or ():
        if item[0] == key:
            value = item[1]
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def from_rpc_error(error: grpc.RpcError, request_id: str = "") -> FleetError:
    """Converts a sync or asyncio gRPC error (both offer code/details/trailing_metadata)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else ()
    field = _metadata_value(trailing, FIELD_METADATA_KEY)
    if not field and code in _FIELD_CODES:
        match = _FIELD_PREFIX.match(details or "")
        field = match.group(1) if match else ""
    request_id = request_id or _metadata_value(trailing, REQUEST_ID_METADATA_KEY)
    return fleet_error(code or grpc.StatusCode.UNKNOWN, details or "", field, request_id)


def from_error_info(info: gateway_pb2.ErrorInfo, request_id: str = "") -> FleetError:
    """Converts the ``error`` event of a Generate stream."""
    return fleet_error(status_code(info.code), info.message, info.field, request_id)
