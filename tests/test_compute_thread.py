"""Unit: ComputeThread runs calls on its one thread, in order, with results and errors
carried back; the transport's host copy equals torch's copy for every layout."""

from __future__ import annotations

import threading

import pytest
import torch

from services.common.compute import ComputeThread
from services.common.transport.codec import copy_host


def test_calls_run_on_one_thread_in_order() -> None:
    compute = ComputeThread("test-compute")
    seen: list[tuple[int, str]] = []
    futures = [compute.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
               for i in range(20)]
    for future in futures:
        future.result(timeout=5)
    assert [i for i, _ in seen] == list(range(20))
    assert len({name for _, name in seen}) == 1
    assert seen[0][1] != threading.current_thread().name
    compute.shutdown()


def test_run_returns_the_result_and_raises_the_error() -> None:
    compute = ComputeThread()
    assert compute.run(sum, [1, 2, 3]) == 6
    with pytest.raises(ZeroDivisionError):
        compute.run(lambda: 1 / 0)
    assert not compute.is_current()
    compute.shutdown()


def test_run_on_the_compute_thread_calls_directly() -> None:
    compute = ComputeThread()
    # Would deadlock if the inner call were queued behind the outer one.
    inner = compute.run(lambda: (compute.is_current(), compute.run(lambda: compute.is_current())))
    assert inner == (True, True)
    compute.shutdown()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64,
                                   torch.bool, torch.uint8])
@pytest.mark.parametrize("shape", [(), (0,), (3, 5), (2, 3, 4, 5)])
def test_copy_host_equals_torch_copy(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    src = (torch.randn(shape) * 10).to(dtype)
    dst = torch.empty(shape, dtype=dtype)
    assert copy_host(dst, src) is dst
    assert torch.equal(dst, src)


def test_copy_host_takes_non_contiguous_sources() -> None:
    src = torch.arange(24, dtype=torch.float32).reshape(4, 6).t()
    dst = torch.empty(src.shape)
    assert torch.equal(copy_host(dst, src), src)


@pytest.mark.parametrize("given, expected", [
    ({}, ("GOMP_SPINCOUNT", "10000")),
    ({"GOMP_SPINCOUNT": "500"}, ("GOMP_SPINCOUNT", "500")),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, ("GOMP_SPINCOUNT", None)),
])
def test_service_processes_spin_their_waiting_openmp_threads_briefly(
        given: dict[str, str], expected: tuple[str, str | None]) -> None:
    """A service process's waiting OpenMP threads spin briefly, then sleep (a user's
    setting wins): OpenMP reads it before torch loads, so it is read back from a fresh
    interpreter that imports a service's modules the way ``python -m`` does."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import services.denoiser.engine, json, os, torch; "
            "print(json.dumps(dict(os.environ)))")
    out = subprocess.run([sys.executable, "-c", code], env={**env, **given},
                         capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(out.stdout.splitlines()[-1])
    name, value = expected
    assert seen.get(name) == value
