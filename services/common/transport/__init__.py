"""Tensors between services: inline bytes, host shared memory or CUDA IPC, under leases.

Producers export with :class:`TensorExporter` and host :class:`TensorLeasesServicer` on their
gRPC server; consumers read with :class:`TensorImporter`, which releases each lease to its owner.
What goes back and forth once per step between two processes of one host (ControlNet latents
and residuals, CFG pass rows) goes through a per-stream step ring instead
(:mod:`~services.common.transport.ring_stream`, set up by
:mod:`~services.common.transport.ring_offer`). See docs/transport.md.
"""

from services.common.transport.errors import TransportError
from services.common.transport.exporter import TensorExporter
from services.common.transport.hostinfo import gpu_uuid, host_id, local_peer
from services.common.transport.importer import MESSAGE_SIZE_OPTIONS, TensorImporter
from services.common.transport.servicer import TensorLeasesServicer, add_tensor_leases

__all__ = [
    "MESSAGE_SIZE_OPTIONS",
    "TensorExporter",
    "TensorImporter",
    "TensorLeasesServicer",
    "TransportError",
    "add_tensor_leases",
    "gpu_uuid",
    "host_id",
    "local_peer",
]
