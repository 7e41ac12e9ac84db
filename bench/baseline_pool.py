"""The baseline server's worker processes, one shared FCFS job queue, and request states.

A router thread reads the workers' events, updates each request's state (kept
for ``GetRequest`` until ``result_ttl_s`` after it ends) and hands the events to
the request's own queue, which the RPC handler streams from.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from bench.baseline_requests import Job, RequestError
from bench.baseline_worker import WorkerSpec, worker_main

log = logging.getLogger("baseline.pool")

QUEUED, RUNNING, SUCCEEDED = "queued", "running", "succeeded"
FAILED, CANCELLED = "failed", "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)


@dataclass
class RequestEntry:
    """One request's state; ``events`` receives (kind, payload) tuples for its stream."""

    job: Job
    slot: int
    state: str = QUEUED
    step: int = 0
    total_steps: int = 0
    worker: int = -1
    result: Any = None
    error: tuple[str, str, str] | None = None
    finished: float = 0.0
    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)


class WorkerPool:
    """``workers`` processes with ``threads`` torch threads each, over one model tree."""

    def __init__(self, models_dir: str, workers: int, threads: int, slots: int = 4096,
                 result_ttl_s: float = 300.0, lora_cache: int = 0) -> None:
        ctx = mp.get_context("spawn")
        self._jobs = ctx.Queue()
        self._events = ctx.Queue()
        self._cancel = ctx.RawArray(ctypes.c_bool, slots)
        self._free = list(range(slots - 1, -1, -1))
        self._ttl = result_ttl_s
        self._lock = threading.Lock()
        self._entries: dict[str, RequestEntry] = {}
        self._ready: set[int] = set()
        self._stopping = False
        self._procs = [ctx.Process(target=worker_main, name=f"baseline-worker-{i}", daemon=True,
                                   args=(WorkerSpec(i, models_dir, threads, lora_cache), self._jobs,
                                         self._events, self._cancel))
                       for i in range(workers)]
        self._router = threading.Thread(target=self._route, name="baseline-router", daemon=True)

    def start(self, timeout_s: float = 300.0) -> None:
        """Starts the workers and waits until each has loaded its pipelines."""
        for proc in self._procs:
            proc.start()
        self._router.start()
        deadline = time.monotonic() + timeout_s
        while len(self._ready) < len(self._procs):
            if any(p.exitcode is not None for p in self._procs):
                raise RuntimeError("a baseline worker exited while loading its pipelines")
            if time.monotonic() > deadline:
                raise TimeoutError("baseline workers did not load in time")
            time.sleep(0.05)

    def submit(self, job: Job) -> tuple[RequestEntry, int]:
        """Queues ``job`` (a request id is assigned when it has none); returns (entry, position)."""
        with self._lock:
            self._prune()
            if not job.request_id:
                job = replace(job, request_id=uuid.uuid4().hex)
            if job.request_id in self._entries:
                raise RequestError("ALREADY_EXISTS", f"request id {job.request_id!r} is in use",
                                   "request_id")
            if not self._free:
                raise RequestError("RESOURCE_EXHAUSTED", "too many requests in flight")
            slot = self._free.pop()
            self._cancel[slot] = False
            entry = RequestEntry(job=job, slot=slot)
            position = sum(1 for e in self._entries.values() if e.state == QUEUED)
            self._entries[job.request_id] = entry
            self._jobs.put((slot, job))
        return entry, position

    def cancel(self, request_id: str) -> bool:
        """Flags the request; its worker stops it at the next step (or before it starts)."""
        with self._lock:
            entry = self._entries.get(request_id)
            if entry is None or entry.state in TERMINAL:
                return False
            self._cancel[entry.slot] = True
            return True

    def get(self, request_id: str) -> RequestEntry | None:
        with self._lock:
            return self._entries.get(request_id)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping = True
        for _ in self._procs:
            self._jobs.put(None)
        for proc in self._procs:
            proc.join(timeout_s)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout_s)

    def _prune(self) -> None:
        now = time.time()
        old = [rid for rid, e in self._entries.items()
               if e.state in TERMINAL and now - e.finished > self._ttl]
        for rid in old:
            del self._entries[rid]

    def _route(self) -> None:
        while not self._stopping:
            try:
                kind, rid, payload = self._events.get(timeout=1.0)
            except queue.Empty:
                self._fail_orphans()
                continue
            except (EOFError, OSError):
                return
            if kind == "ready":
                self._ready.add(payload)
                continue
            with self._lock:
                entry = self._entries.get(rid)
                if entry is not None:
                    self._apply(entry, kind, payload)
            if entry is not None:
                entry.events.put((kind, payload))

    def _apply(self, entry: RequestEntry, kind: str, payload: Any) -> None:
        if kind == "started":
            entry.state, entry.worker = RUNNING, payload
        elif kind == "progress":
            entry.step, entry.total_steps = payload[0], payload[1]
        elif kind in ("result", "error"):
            if kind == "result":
                entry.state, entry.result = SUCCEEDED, payload
            else:
                entry.state = CANCELLED if payload[0] == "CANCELLED" else FAILED
                entry.error = payload
            entry.finished = time.time()
            self._cancel[entry.slot] = False
            self._free.append(entry.slot)

    def _fail_orphans(self) -> None:
        """Fails requests whose worker died mid-run, so their streams end."""
        dead = {i for i, p in enumerate(self._procs) if p.exitcode is not None}
        if not dead or self._stopping:
            return
        with self._lock:
            orphans = [e for e in self._entries.values()
                       if e.state == RUNNING and e.worker in dead]
            for entry in orphans:
                self._apply(entry, "error", ("INTERNAL", "the worker process exited", ""))
        for entry in orphans:
            entry.events.put(("error", entry.error))
