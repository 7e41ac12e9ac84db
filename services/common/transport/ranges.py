"""First-fit allocation of byte ranges inside one fixed buffer (the CUDA IPC pool)."""

from __future__ import annotations

import bisect

DEFAULT_ALIGNMENT = 512  # covers every dtype and CUDA's own 256-byte allocation granularity


class RangeAllocator:
    """Hands out aligned ``[offset, offset + size)`` ranges of ``capacity`` bytes; not locked."""

    def __init__(self, capacity: int, alignment: int = DEFAULT_ALIGNMENT) -> None:
        self.capacity = capacity
        self.alignment = alignment
        self._starts: list[int] = [0] if capacity else []  # free ranges, sorted, coalesced
        self._sizes: list[int] = [capacity] if capacity else []
        self.used = 0

    def rounded(self, nbytes: int) -> int:
        a = self.alignment
        return max(a, (nbytes + a - 1) // a * a)

    def alloc(self, nbytes: int) -> int | None:
        """Offset of a free range of at least ``nbytes``, or None when none is big enough."""
        need = self.rounded(nbytes)
        for i, size in enumerate(self._sizes):
            if size >= need:
                offset = self._starts[i]
                if size == need:
                    del self._starts[i], self._sizes[i]
                else:
                    self._starts[i] += need
                    self._sizes[i] -= need
                self.used += need
                return offset
        return None

    def free(self, offset: int, nbytes: int) -> None:
        """Return a range handed out by :meth:`alloc` with the same ``nbytes``."""
        size = self.rounded(nbytes)
        i = bisect.bisect_left(self._starts, offset)
        if i < len(self._starts) and self._starts[i] < offset + size:
            raise ValueError(f"range at {offset} overlaps a free range: freed twice?")
        if i > 0 and self._starts[i - 1] + self._sizes[i - 1] > offset:
            raise ValueError(f"range at {offset} overlaps a free range: freed twice?")
        self.used -= size
        if i > 0 and self._starts[i - 1] + self._sizes[i - 1] == offset:
            i -= 1
            self._sizes[i] += size
        else:
            self._starts.insert(i, offset)
            self._sizes.insert(i, size)
        if i + 1 < len(self._starts) and self._starts[i] + self._sizes[i] == self._starts[i + 1]:
            self._sizes[i] += self._sizes[i + 1]
            del self._starts[i + 1], self._sizes[i + 1]
