"""One LoRA in host shared memory: its converted layers packed into one segment.

Every denoiser on the node maps the same segment (by name, offset and size in
its TensorRefs), so the node holds one copy whatever its number of replicas.
The segment is created and unlinked only by the LoRA cache process; its name
follows the transport's scheme, so a crashed cache's segments are reaped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusion.v1 import tensor_pb2
from services.common.transport.codec import new_ref, view_buffer
from services.common.transport.shm import Segment, SegmentNamer

ALIGN = 64


@dataclass(frozen=True)
class Placed:
    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * torch.empty((), dtype=self.dtype).element_size()


class HostLora:
    """A LoRA file's tensors in one shared-memory segment, read-only after construction."""

    def __init__(self, name: str, segment: Segment, layout: dict[str, Placed],
                 metadata: dict[str, str]) -> None:
        self.name = name
        self.segment = segment
        self.layout = layout
        self.metadata = metadata

    @property
    def nbytes(self) -> int:
        return self.segment.size

    @classmethod
    def pack(cls, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
             namer: SegmentNamer) -> HostLora:
        """Copies ``tensors`` into a new segment."""
        layout: dict[str, Placed] = {}
        offset = 0
        for key in sorted(tensors):
            layout[key] = Placed(offset, tensors[key].dtype, tuple(tensors[key].shape))
            offset += -(-layout[key].nbytes // ALIGN) * ALIGN
        segment = Segment.create(namer.next(), max(offset, ALIGN))
        try:
            for key, place in layout.items():
                view_buffer(segment.buffer, place.offset, place.dtype,
                            place.shape).copy_(tensors[key])
        except BaseException:
            segment.unlink()
            segment.close()
            raise
        return cls(name, segment, layout, metadata)

    def tensor(self, key: str) -> torch.Tensor:
        """A view of one tensor in the segment (no copy)."""
        place = self.layout[key]
        return view_buffer(self.segment.buffer, place.offset, place.dtype, place.shape)

    def shm_ref(self, key: str) -> tensor_pb2.TensorRef:
        """A ref other processes on this host read from the segment directly (no lease: the
        cache keeps the segment while the LoRA is pinned or resident)."""
        place = self.layout[key]
        ref = new_ref(torch.empty(place.shape, dtype=place.dtype, device="meta"))
        ref.host_shm.segment = self.segment.name
        ref.host_shm.offset = place.offset
        ref.host_shm.nbytes = place.nbytes
        return ref

    def free(self) -> None:
        self.segment.unlink()
        self.segment.close()

