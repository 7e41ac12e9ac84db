"""Loading a step's cached activations block by block, overlapped with the compute.

For each block the loader gathers from the mapped template records exactly
what the block will read: for a sparse block the convolution rings, the
GroupNorm moments at R and their totals, the self-attention keys and values
and (for the head) the cached UNet output; for a dense block whose input is
still sparse, the cached full input. Gathered values are converted to the
compute dtype, so a block never touches the store.

A background thread runs the loads in block order while the step loop
computes: the load of block i+1 (up to ``lookahead`` blocks ahead) proceeds
while block i computes, and block i waits only if its load is late. Each
load reports its bytes and seconds, from which the planner learns the load
bandwidth.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from services.denoiser.activation_cache import TemplateRecord
from services.denoiser.activation_recorder import EPS, entry
from services.denoiser.block_planner import input_sparse
from services.denoiser.edit_regions import RegionPlan
from services.denoiser.masked_unet import Backgrounds, Block, BlockCaches, Unit


@dataclass(frozen=True)
class RecordRows:
    """One request of the batch: its record, the step to read and its number of rows."""

    record: TemplateRecord
    step: int
    rows: int


class Gatherer:
    """Reads entries of the batch's records at flat token indices of the batch."""

    def __init__(self, requests: list[RecordRows], plan: RegionPlan,
                 dtype: torch.dtype = torch.float32) -> None:
        self.requests = requests
        self.plan = plan
        self.dtype = dtype
        self.bytes = 0

    def _tensor(self, req: RecordRows, name: str) -> torch.Tensor:
        return req.record.get(req.step, name)

    def at(self, name: str, flat: torch.Tensor, level: int) -> torch.Tensor:
        """Entry ``name`` ([rows, H*W, C] per request) at batch flat indices ``flat``."""
        tokens = self.plan.levels[level].region.grid.tokens
        parts, first = [], 0
        for req in self.requests:
            lo, hi = first * tokens, (first + req.rows) * tokens
            local = flat[(flat >= lo) & (flat < hi)] - lo
            src = self._tensor(req, name)
            picked = src.reshape(-1, src.shape[-1]).index_select(0, local)
            self.bytes += picked.numel() * picked.element_size()
            parts.append(picked.to(self.dtype))
            first += req.rows
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def full(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Entry ``name`` of every row: ``[B, ...]``."""
        parts = []
        for req in self.requests:
            src = self._tensor(req, name)
            self.bytes += src.numel() * src.element_size()
            parts.append(src.to(dtype or self.dtype))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def unit(self, unit: Unit) -> dict[str, torch.Tensor]:
        plan, name, level = self.plan, unit.name, unit.level
        lp = plan.levels[level] if unit.kind not in ("up",) else None
        e = lambda what: entry(name, what)  # noqa: E731 - short local alias
        f64 = torch.float64
        if unit.kind == "resnet":
            assert lp is not None
            return {"ring": self.at(e("x"), lp.resnet.input.ring, level),
                    "m1": self.at(e("m1"), lp.region.flat, level), "t1": self.full(e("t1"), f64),
                    "m2": self.at(e("m2"), lp.resnet.conv1.out, level),
                    "t2": self.full(e("t2"), f64)}
        if unit.kind == "transformer":
            assert lp is not None
            found = {"m": self.at(e("m"), lp.region.flat, level), "t": self.full(e("t"), f64)}
            for key in self.requests[0].record.entries(self.requests[0].step):
                if key.startswith(f"{name}:k") or key.startswith(f"{name}:v"):
                    found[key.split(":")[1]] = self.full(key)
            return found
        if unit.kind == "down":
            return {"ring": self.at(e("x"), plan.down_inputs[level].ring, level)}
        if unit.kind == "up":
            return {"ring": self.at(e("x"), plan.up_inputs[level - 1].ring, level)}
        if unit.kind == "head":
            assert lp is not None
            return {"ring": self.at(e("x"), lp.ring.ring, level),
                    "m": self.at(e("m"), lp.region.flat, level), "t": self.full(e("t"), f64)}
        return {"full": self.full(EPS)}

    def block(self, block: Block, sparse: bool, input_sparse: bool
              ) -> tuple[BlockCaches, Backgrounds]:
        if sparse:
            return {u.name: self.unit(u) for u in block.units}, {}
        if input_sparse:
            return {}, {name: self.full(entry(name, "x")) for name in block.inputs}
        return {}, {}


@dataclass
class LoadReport:
    block: int
    bytes: int
    seconds: float


class StepLoad:
    """The loads of one step, started at once; ``__call__(i)`` waits for block i's."""

    def __init__(self, executor: ThreadPoolExecutor, gatherer: Gatherer, blocks: list[Block],
                 sparse: list[bool], lookahead: int,
                 report: Callable[[LoadReport], None] | None = None) -> None:
        self._started = [threading.Event() for _ in blocks]
        self._futures: list[Future[tuple[BlockCaches, Backgrounds]]] = []
        self.waited = 0.0
        for i, block in enumerate(blocks):
            gate = self._started[i - lookahead] if i >= lookahead else None
            needs_input = input_sparse(sparse, i, block.kind == "up")
            self._futures.append(executor.submit(self._load, gatherer, block, sparse[i],
                                                 needs_input, gate, i, report))

    @staticmethod
    def _load(gatherer: Gatherer, block: Block, sparse: bool, needs_input: bool,
              gate: threading.Event | None, index: int,
              report: Callable[[LoadReport], None] | None) -> tuple[BlockCaches, Backgrounds]:
        if gate is not None:
            gate.wait()
        before, started = gatherer.bytes, time.perf_counter()
        loaded = gatherer.block(block, sparse, needs_input)
        if report is not None and gatherer.bytes > before:
            report(LoadReport(index, gatherer.bytes - before, time.perf_counter() - started))
        return loaded

    def __call__(self, index: int) -> tuple[BlockCaches, Backgrounds]:
        self._started[index].set()
        started = time.perf_counter()
        result = self._futures[index].result()
        self.waited += time.perf_counter() - started
        return result

    def close(self) -> None:
        for event in self._started:
            event.set()
        for future in self._futures:
            future.cancel()


class CacheLoader:
    """One loader thread per denoiser; a step's loads queue behind the previous step's."""

    def __init__(self, lookahead: int = 1, overlap: bool = True) -> None:
        self.lookahead = max(1, lookahead)
        self.overlap = overlap
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cache-load")

    def start(self, requests: list[RecordRows], plan: RegionPlan, blocks: list[Block],
              sparse: list[bool], report: Callable[[LoadReport], None] | None = None
              ) -> StepLoad:
        gatherer = Gatherer(requests, plan)
        if not self.overlap:  # load everything first, then compute: the baseline to compare
            load = StepLoad(self._executor, gatherer, blocks, sparse, len(blocks), report)
            load(len(blocks) - 1)
            return load
        return StepLoad(self._executor, gatherer, blocks, sparse, self.lookahead, report)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
