"""One compute thread per engine: its model loads and forward passes all run there.

torch's CPU kernels run their parallel regions on an OpenMP team that belongs to
the thread that starts them. A second thread that ever starts a parallel region
gets a second team, whose workers stay alive; from then on the process manages
more OpenMP threads than the machine has cores, and the runtime stops letting
its workers spin between regions. Every region then pays a sleep/wake round
trip: on two cores a UNet forward of the small model took 82 ms on such a
second thread against 46 ms on a lone compute thread (``bench/compute_thread.py``).
gRPC serves each call on a thread of its pool, so each engine hands its tensor
work to its own
:class:`ComputeThread`, and the transport copies bytes without starting
parallel regions. A service process holds one engine, hence one compute
thread; tests that put several engines in one process get one each, so one
engine waiting on another never deadlocks.

On a GPU the same thread keeps kernel launches, CUDA graphs and streams on one
host thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import ParamSpec, TypeVar

from services.common.telemetry.tracing import ContextThreadPool

P = ParamSpec("P")
R = TypeVar("R")


class ComputeThread:
    """A single worker thread; calls run one at a time, in the order they were made."""

    def __init__(self, name: str = "compute") -> None:
        self._local = threading.local()
        # Calls run in their caller's trace context: spans they start are its children.
        self._executor = ContextThreadPool(max_workers=1, thread_name_prefix=name,
                                           initializer=self._mark)

    def _mark(self) -> None:
        self._local.mine = True

    def is_current(self) -> bool:
        """Whether the caller is this compute thread."""
        return getattr(self._local, "mine", False)

    def submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        return self._executor.submit(fn, *args, **kwargs)

    def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(*args, **kwargs)`` on this thread; its result, or its exception raised here.

        Called on this thread itself, it calls ``fn`` directly.
        """
        if self.is_current():
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
