"""A shared-memory segment cut into equal slots, each holding one message's tensors.

The producer creates the ring (named like every transport segment, so a later
process unlinks it if the producer dies first) and writes message n into slot
``n % slots``; the consumer attaches by name and reads. Which slot may be
written or read when is decided by :class:`~services.common.transport.ring_stream.RingStream`;
this module only lays tensors out and copies them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from services.common.transport import metrics
from services.common.transport.codec import copy_host, torch_dtype, view_buffer, wire_dtype
from services.common.transport.errors import TransportError
from services.common.transport.shm import NAME_PREFIX, Segment, SegmentNamer, unlink_name
from services.common.transport.shm_pool import size_class

ALIGNMENT = 64  # every tensor starts on a cache line


def _aligned(nbytes: int) -> int:
    return (nbytes + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


@dataclass(frozen=True)
class TensorLayout:
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # from the start of the slot

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class SlotLayout:
    """Where each tensor of a message lies inside a slot, and the slot's size."""

    tensors: tuple[TensorLayout, ...]
    slot_bytes: int

    @classmethod
    def of(cls, tensors: Sequence[torch.Tensor]) -> SlotLayout:
        return cls.of_specs([(t.dtype, tuple(t.shape)) for t in tensors])

    @classmethod
    def of_specs(cls, specs: Sequence[tuple[torch.dtype, tuple[int, ...]]]) -> SlotLayout:
        offset, layouts = 0, []
        for dtype, shape in specs:
            layout = TensorLayout(dtype, shape, offset)
            layouts.append(layout)
            offset += _aligned(layout.nbytes)
        return cls(tuple(layouts), max(offset, ALIGNMENT))

    def fits(self, tensors: Sequence[torch.Tensor]) -> bool:
        return len(tensors) == len(self.tensors) and all(
            t.dtype == lay.dtype and tuple(t.shape) == lay.shape
            for t, lay in zip(tensors, self.tensors, strict=True))

    def to_wire(self) -> list[list[Any]]:
        return [[int(wire_dtype(t.dtype)), list(t.shape)] for t in self.tensors]

    @classmethod
    def from_wire(cls, wire: Any) -> SlotLayout:
        """The layout a peer announced; TransportError when it is not one."""
        try:
            pairs = [(torch_dtype(int(dtype)), tuple(int(d) for d in shape))
                     for dtype, shape in wire]
        except (TypeError, ValueError) as e:
            raise TransportError(f"bad ring layout {wire!r}: {e}") from None
        if any(d < 0 for _, shape in pairs for d in shape):
            raise TransportError(f"negative dimension in ring layout {wire!r}")
        return cls.of_specs(pairs)


class SlotRing:
    """``slots`` slots of one layout in one segment. Not thread-safe: one stream uses it."""

    def __init__(self, segment: Segment, layout: SlotLayout, slots: int, role: str) -> None:
        need = layout.slot_bytes * slots
        if segment.size < need:
            raise TransportError(f"ring segment {segment.name} has {segment.size} bytes, "
                                 f"{slots} slots of {layout.slot_bytes} need {need}")
        self.segment = segment
        self.layout = layout
        self.slots = slots
        self.role = role

    @property
    def name(self) -> str:
        return self.segment.name

    @classmethod
    def create(cls, namer: SegmentNamer, layout: SlotLayout, slots: int, role: str) -> SlotRing:
        """A new segment for ``slots`` messages of ``layout``; OSError when /dev/shm refuses."""
        segment = Segment.create(namer.next(), size_class(layout.slot_bytes * slots))
        metrics.SHM_BYTES.labels(role).inc(segment.size)
        return cls(segment, layout, slots, role)

    @classmethod
    def attach(cls, name: str, layout: SlotLayout, slots: int, role: str) -> SlotRing:
        if not name.startswith(NAME_PREFIX) or "/" in name:
            raise TransportError(f"ring segment name {name!r} is not a transport segment")
        try:
            segment = Segment.attach(name)
        except FileNotFoundError:
            raise TransportError(f"unknown ring segment {name!r}") from None
        except OSError as e:
            raise TransportError(f"cannot open ring segment {name!r}: {e}") from e
        try:
            return cls(segment, layout, slots, role)
        except TransportError:
            segment.close()
            raise

    def write(self, slot: int, tensors: Sequence[torch.Tensor]) -> None:
        for view, tensor in zip(self.views(slot), tensors, strict=True):
            copy_host(view, tensor.detach())

    def views(self, slot: int) -> list[torch.Tensor]:
        """The slot's tensors, sharing the segment's memory."""
        base = slot * self.layout.slot_bytes
        return [view_buffer(self.segment.buffer, base + t.offset, t.dtype, t.shape)
                for t in self.layout.tensors]

    def copy_out(self, slot: int) -> list[torch.Tensor]:
        """New tensors with the slot's values."""
        return [copy_host(torch.empty(v.shape, dtype=v.dtype), v) for v in self.views(slot)]

    @staticmethod
    def unlink_name(name: str) -> None:
        """Removes a ring's name (a no-op when it is gone or not a transport segment)."""
        if name.startswith(NAME_PREFIX) and "/" not in name:
            unlink_name(name)

    def close(self, unlink: bool) -> None:
        """Unmap (a tensor still viewing the memory keeps it mapped until it goes); ``unlink``
        also removes the name, which either end may do once the stream is over."""
        if unlink:
            self.segment.unlink()
        self.segment.close()
        if self.segment.created:
            metrics.SHM_BYTES.labels(self.role).dec(self.segment.size)
