"""POSIX shared-memory segments: a thin shm_open + mmap wrapper, names, and orphan cleanup.

Deliberately not ``multiprocessing.shared_memory``: on Python 3.11 it registers every segment it
merely attaches to with the resource tracker, which then unlinks the producer's segment when
the consumer exits. Here only the creating process ever unlinks.

Names are ``dfleet-<pid namespace>-<pid>-<random>-<n>``, so a later process in the same pid
namespace can tell the segments of a dead producer (killed before its atexit hook ran) and
unlink them.
"""

from __future__ import annotations

import _posixshmem
import itertools
import logging
import mmap
import os
import secrets
import threading

NAME_PREFIX = "dfleet-"
SHM_DIR = "/dev/shm"

log = logging.getLogger(__name__)


def _pid_namespace() -> str:
    try:
        return f"{os.stat('/proc/self/ns/pid').st_ino:x}"
    except OSError:
        return "0"


class Segment:
    """One mapped segment. ``buffer`` stays valid until :meth:`close`."""

    def __init__(self, name: str, mapping: mmap.mmap, created: bool) -> None:
        self.name = name
        self.size = len(mapping)
        self.created = created
        self.buffer = mapping

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size)
        except BaseException:
            _posixshmem.shm_unlink("/" + name)
            raise
        finally:
            os.close(fd)
        return cls(name, mapping, created=True)

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Map an existing segment; FileNotFoundError when no such segment exists."""
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0)
        try:
            size = os.fstat(fd).st_size
            # Writable so torch can view it without a warning; importers only read.
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, mapping, created=False)

    def unlink(self) -> None:
        unlink_name(self.name)

    def close(self) -> None:
        """Unmap; a tensor still viewing the memory keeps the mapping alive until it goes."""
        try:
            self.buffer.close()
        except BufferError:
            pass


def unlink_name(name: str) -> None:
    """Removes a segment's name; a no-op when it is already gone."""
    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        pass


class SegmentNamer:
    """Unique names for the segments one process creates."""

    def __init__(self) -> None:
        self.prefix = f"{NAME_PREFIX}{_pid_namespace()}-{os.getpid()}-{secrets.token_hex(4)}-"
        self._n = itertools.count(1)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            return f"{self.prefix}{next(self._n)}"


def reap_orphans() -> int:
    """Unlink segments left by dead processes of this pid namespace; returns how many."""
    ours = _pid_namespace()
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    reaped = 0
    for name in names:
        parts = name[len(NAME_PREFIX) :].split("-") if name.startswith(NAME_PREFIX) else []
        if len(parts) != 4 or parts[0] != ours or not parts[1].isdigit():
            continue
        if _alive(int(parts[1])):
            continue
        try:
            _posixshmem.shm_unlink("/" + name)
            reaped += 1
        except OSError:
            continue
    if reaped:
        log.warning("unlinked %d shared-memory segments of dead processes", reaped)
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
