"""What a tensor costs between two processes on one host: inline gRPC bytes vs host shared
memory through a reused segment vs a new segment per call.

Each call is the whole trip: the producer exports, sends the TensorRef in a unary gRPC call to a
consumer process, which loads it (a copy) and releases the lease by RPC, then answers. Prints a
table and writes JSON (median and p90 over the repeats, milliseconds).

    python bench/transport_costs.py [--repeats 50] [--out bench/results/transport_costs.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from concurrent import futures
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion.v1 import tensor_pb2
from services.common.transport import (
    MESSAGE_SIZE_OPTIONS,
    TensorExporter,
    TensorImporter,
    add_tensor_leases,
    local_peer,
)

SIZES = {"100 KB": 100_000, "1 MB": 1_000_000, "27 MB": 27_000_000}
MODES = ("empty call", "inline", "shm reused", "shm new")
METHOD = "/dfleet.bench.TensorSink/Put"


def _consumer(conn: Connection) -> None:
    """Child process: a gRPC server whose one method loads the ref it is sent."""
    importer = TensorImporter(role="bench")

    def put(ref: tensor_pb2.TensorRef, context: grpc.ServicerContext) -> bytes:
        if ref.dtype:
            importer.load(ref)
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=MESSAGE_SIZE_OPTIONS)
    handler = grpc.unary_unary_rpc_method_handler(
        put, request_deserializer=tensor_pb2.TensorRef.FromString, response_serializer=bytes
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("dfleet.bench.TensorSink", {"Put": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)
    conn.recv()  # wait until told to stop
    server.stop(grace=None)
    importer.close()


WARMUP_CALLS = 5  # open channels, create and attach segments, let malloc settle


def _time_modes(call, makers: dict, repeats: int) -> dict[str, list[float]]:
    """Milliseconds per call for each mode, the modes taking turns call by call so that load
    from other processes on the machine falls on all of them alike."""
    times: dict[str, list[float]] = {mode: [] for mode in makers}
    for i in range(repeats + WARMUP_CALLS):
        for mode, make_ref in makers.items():
            start = time.perf_counter()
            call(make_ref())
            if i >= WARMUP_CALLS:
                times[mode].append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", default="bench/results/transport_costs.json")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    consumer = ctx.Process(target=_consumer, args=(child,), daemon=True)
    consumer.start()
    port = parent.recv()

    reused = TensorExporter("", role="bench")
    fresh = TensorExporter("", role="bench", shm_idle_budget_bytes=0)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=MESSAGE_SIZE_OPTIONS)
    add_tensor_leases(server, reused)
    fresh_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    fresh_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_tensor_leases(fresh_server, fresh)
    fresh.owner_address = f"127.0.0.1:{fresh_server.add_insecure_port('127.0.0.1:0')}"
    fresh_server.start()
    reused.owner_address = f"127.0.0.1:{fresh_port}"

    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=MESSAGE_SIZE_OPTIONS)
    call = channel.unary_unary(
        METHOD,
        request_serializer=tensor_pb2.TensorRef.SerializeToString,
        response_deserializer=bytes,
    )
    shm_peer = local_peer(inline_max_bytes=1)
    rows = []
    for label, nbytes in SIZES.items():
        tensor = torch.randn(nbytes // 2).to(torch.float16)
        makers = {
            "empty call": tensor_pb2.TensorRef,
            "inline": lambda t=tensor: reused.export(t),
            "shm reused": lambda t=tensor: reused.export(t, shm_peer),
            "shm new": lambda t=tensor: fresh.export(t, shm_peer),
        }
        row: dict[str, object] = {"size": label, "bytes": nbytes}
        for mode, times in _time_modes(call, makers, args.repeats).items():
            row[mode] = {
                "median_ms": statistics.median(times),
                "p90_ms": statistics.quantiles(times, n=10)[-1],
            }
        rows.append(row)

    channel.close()
    parent.send("stop")
    consumer.join(30)
    server.stop(grace=None)
    fresh_server.stop(grace=None)
    reused.close()
    fresh.close()

    header = f"{'size':>7} | " + " | ".join(f"{m:>11}" for m in MODES) + " | shm reused vs inline"
    print(
        f"median ms per call over {args.repeats} calls ({os.cpu_count()} CPUs, {platform.node()})"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = " | ".join(f"{row[m]['median_ms']:>11.2f}" for m in MODES)  # type: ignore[index]
        speedup = row["inline"]["median_ms"] / row["shm reused"]["median_ms"]  # type: ignore[index]
        print(f"{row['size']:>7} | {cells} | {speedup:>6.1f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "bench": "transport_costs",
        "unit": "ms per call (export + gRPC call + load + lease release)",
        "repeats": args.repeats,
        "warmup_calls": WARMUP_CALLS,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
