"""The one error the transport raises for a ref it cannot turn back into a tensor."""

from __future__ import annotations


class TransportError(Exception):
    """A bad or stale TensorRef: unknown dtype, size mismatch, unknown segment, expired lease.

    Permanent for that ref: retrying the same ref cannot succeed, the producer must export again.
    """
