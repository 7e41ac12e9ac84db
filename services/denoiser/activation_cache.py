"""Host-memory store of template activations, with a byte budget, LRU eviction and a disk tier.

One record per (template, recipe) is one safetensors file in a directory
that all denoisers of a node share: by default on ``/dev/shm``, so the
bytes live in host memory and every process maps the same pages. The
directory's total size stays within ``memory_bytes``: when a new record
pushes it over, the least recently used records leave, moved to
``spill_dir`` (local disk, its own budget) when one is set, else deleted.
Readers touch a record's modification time, which is the LRU order;
eviction runs under an advisory file lock, so concurrent processes agree.

Readers map the file once and hand out tensors that alias the mapped pages
(no copy until a consumer gathers what it needs). A record evicted while
mapped stays readable by whoever mapped it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import mmap
import os
import shutil
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

log = logging.getLogger("dfleet.denoiser.cache")

SUFFIX = ".safetensors"
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "F64": torch.float64,
           "BF16": torch.bfloat16}


@dataclass(frozen=True)
class CacheSettings:
    """Where template activations live and how much of them."""

    memory_dir: str = f"/dev/shm/dfleet-activations-{os.getuid()}"
    memory_bytes: int = 4 << 30
    spill_dir: str = ""          # empty = evicted records are dropped
    spill_bytes: int = 32 << 30
    dtype: str = "float16"       # inputs, keys and values; moments and outputs stay float32

    def validate(self) -> None:
        if self.memory_bytes <= 0 or self.spill_bytes < 0:
            raise ValueError(f"memory_bytes={self.memory_bytes} must be positive and "
                             f"spill_bytes={self.spill_bytes} non-negative")
        if self.dtype not in ("float16", "float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r}: use float16, float32 or bfloat16")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


class TemplateRecord:
    """A mapped record: per step, named tensors (views of the mapped file)."""

    def __init__(self, key: str, path: Path) -> None:
        self.key = key
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        (length,) = struct.unpack("<Q", self._map[:8])
        header = json.loads(self._map[8:8 + length])
        self.metadata: dict[str, str] = header.pop("__metadata__", {})
        self._base = 8 + length
        self._header = header
        self.nbytes = len(self._map)
        self.steps = int(self.metadata.get("steps", 0))

    def get(self, step: int, entry: str) -> torch.Tensor:
        info = self._header[f"{step}/{entry}"]
        start, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        count = (end - start) // torch.empty((), dtype=dtype).element_size()
        flat = torch.frombuffer(self._map, dtype=dtype, count=count, offset=self._base + start)
        return flat.reshape(info["shape"])

    def entries(self, step: int) -> list[str]:
        prefix = f"{step}/"
        return [k[len(prefix):] for k in self._header if k.startswith(prefix)]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stored: int = 0
    evicted: int = 0
    spilled: int = 0
    promoted: int = 0
    sizes: dict[str, int] = field(default_factory=dict)


def private_dir(folder: Path) -> Path:
    """``folder``, made owner-only (0700): recorded activations are other users' prompts'
    work. One that another user owns is refused rather than shared."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if folder.stat().st_uid != os.getuid():
        raise ValueError(f"activation folder {folder} belongs to another user; set "
                         "--activation-dir to a folder of this user's")
    folder.chmod(0o700)
    return folder


class ActivationCache:
    def __init__(self, settings: CacheSettings) -> None:
        settings.validate()
        self.settings = settings
        self.memory = private_dir(Path(settings.memory_dir))
        self.spill = private_dir(Path(settings.spill_dir)) if settings.spill_dir else None
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._clock = 0

    @staticmethod
    def file_name(key: str) -> str:
        return hashlib.sha1(key.encode()).hexdigest()[:32] + SUFFIX

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, open(self.memory / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def put(self, key: str, steps: list[dict[str, torch.Tensor]],
            metadata: dict[str, str] | None = None) -> int:
        """Stores a record; returns its size in bytes (0 when it alone exceeds the budget)."""
        tensors = {f"{i}/{name}": t.contiguous() for i, step in enumerate(steps)
                   for name, t in step.items()}
        meta = {"key": key, "steps": str(len(steps)), **(metadata or {})}
        tmp = self.memory / f".tmp-{uuid.uuid4().hex}"
        save_file(tensors, str(tmp), metadata=meta)
        size = tmp.stat().st_size
        if size > self.settings.memory_bytes:
            tmp.unlink()
            log.warning("template record over the whole memory budget, not kept",
                        extra={"key": key, "bytes": size})
            return 0
        with self._locked():
            path = self.memory / self.file_name(key)
            os.replace(tmp, path)
            self._touch(path)
            self._enforce(keep=path.name)
        self.stats.stored += 1
        self.stats.sizes[key] = size
        return size

    def get(self, key: str) -> TemplateRecord | None:
        name = self.file_name(key)
        path = self.memory / name
        with self._locked():
            if not path.exists() and self.spill is not None and (self.spill / name).exists():
                shutil.move(str(self.spill / name), str(path))
                self.stats.promoted += 1
                self._enforce(keep=name)
            if not path.exists():
                self.stats.misses += 1
                return None
            self._touch(path)
            record = TemplateRecord(key, path)
        self.stats.hits += 1
        return record

    def _touch(self, path: Path) -> None:
        """Marks a use: the modification time is the LRU order (the kernel's own is coarse)."""
        self._clock = max(time.time_ns(), self._clock + 1)
        os.utime(path, ns=(self._clock, self._clock))

    def contains(self, key: str) -> bool:
        name = self.file_name(key)
        return (self.memory / name).exists() or (
            self.spill is not None and (self.spill / name).exists())

    def used_bytes(self, spill: bool = False) -> int:
        folder = self.spill if spill else self.memory
        return sum(size for _, size, _ in _records(folder)) if folder is not None else 0

    def _enforce(self, keep: str) -> None:
        """Evicts least recently used records until the memory tier fits (lock held)."""
        records = sorted(_records(self.memory))  # oldest first
        total = sum(size for _, size, _ in records)
        for _, size, path in records:
            if total <= self.settings.memory_bytes:
                break
            if path.name == keep:
                continue
            total -= size
            self.stats.evicted += 1
            if self.spill is not None and size <= self.settings.spill_bytes:
                shutil.move(str(path), str(self.spill / path.name))
                self.stats.spilled += 1
                self._enforce_spill()
            else:
                path.unlink(missing_ok=True)

    def _enforce_spill(self) -> None:
        assert self.spill is not None
        records = sorted(_records(self.spill))
        total = sum(size for _, size, _ in records)
        for _, size, path in records:
            if total <= self.settings.spill_bytes:
                break
            total -= size
            path.unlink(missing_ok=True)


def _records(folder: Path) -> list[tuple[float, int, Path]]:
    found = []
    for path in folder.glob(f"*{SUFFIX}"):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        found.append((st.st_mtime_ns, st.st_size, path))
    return found
