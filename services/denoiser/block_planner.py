"""Per block: load the cache and compute the region, or recompute every token? From measured costs.

Costs are linear models fitted online on what the step loop measures:

* dense compute of block b: ``d_b * rows``,
* sparse compute: ``s0_b * rows + s1_b * work`` (``work`` = region tokens of the
  block's level, summed over rows, as a fraction of the level's tokens),
* bytes a sparse block loads: ``l0_b * rows + l1_b * work`` (keys/values of
  every token scale with rows, rings and moments with the region),
* load seconds: bytes over the measured bandwidth of the loader.

A dense block whose input is still sparse loads that full input (its size
is known). The plan minimises the simulated step time of the pipeline in
which block i+1's load runs while block i computes; small masks make the
loads the bottleneck, and then recomputing a block (no load) can beat
waiting for it. The first batch of a model runs one all-dense and one
all-sparse step to measure before it plans.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

SPARSE_OVERHEAD = 1.2  # prior: a sparse token costs this much more than a dense one


class LinearFit:
    """Least squares on a few features with a forgetting factor, pulled towards a prior.

    The prior (coefficients and a strength, in units of squared features)
    keeps the fit sensible while the observations do not determine it, e.g.
    every sparse step of one request has the same work.
    """

    def __init__(self, features: int, forget: float = 0.9, ridge: float = 1e-6) -> None:
        self.xtx = np.zeros((features, features))
        self.xty = np.zeros(features)
        self.forget = forget
        self.seen = 0
        self.prior = np.zeros(features)
        self.strength = ridge

    def set_prior(self, coef: list[float], strength: float) -> None:
        self.prior = np.asarray(coef, dtype=float)
        self.strength = strength

    def add(self, x: list[float], y: float) -> None:
        v = np.asarray(x, dtype=float)
        self.xtx = self.forget * self.xtx + np.outer(v, v)
        self.xty = self.forget * self.xty + v * y
        self.seen += 1

    def predict(self, x: list[float]) -> float:
        eye = np.eye(len(self.xty))
        coef = np.linalg.solve(self.xtx + self.strength * eye,
                               self.xty + self.strength * self.prior)
        return float(max(np.dot(coef, x), 0.0))


@dataclass
class BlockCosts:
    dense: LinearFit = field(default_factory=lambda: LinearFit(1))
    sparse: LinearFit = field(default_factory=lambda: LinearFit(2))
    load_bytes: LinearFit = field(default_factory=lambda: LinearFit(2))


@dataclass(frozen=True)
class BlockDemand:
    """What one block of a planned step needs: rows, region work, full-input bytes."""

    rows: int
    work: float
    input_bytes: int
    is_up: bool = False


def input_sparse(modes: list[bool], index: int, is_up: bool) -> bool:
    """Whether a block's input (or, for an up block, a skip) arrives sparse."""
    return index > 0 and (modes[index - 1] or (is_up and any(modes[:index])))


def simulate(compute: list[float], load: list[float]) -> float:
    """Step time when block i's load may start once block i-1 starts computing."""
    load_end = comp_end = 0.0
    prev_start = 0.0
    for c, ld in zip(compute, load, strict=True):
        if ld > 0:
            load_end = max(load_end, prev_start) + ld
            start = max(comp_end, load_end)
        else:
            start = comp_end
        prev_start = start
        comp_end = start + c
    return comp_end


class BlockPlanner:
    def __init__(self, blocks: int, default_bandwidth: float = 4e9) -> None:
        self.blocks = blocks
        self.costs = [BlockCosts() for _ in range(blocks)]
        self.bandwidth = default_bandwidth  # bytes per second
        self._bw_seen = 0

    # measurements
    def observe_compute(self, block: int, sparse: bool, demand: BlockDemand,
                        seconds: float) -> None:
        costs = self.costs[block]
        if sparse:
            costs.sparse.add([demand.rows, demand.work], seconds)
            return
        costs.dense.add([demand.rows], seconds)
        # Until sparse steps of several region sizes are seen: sparse compute grows with the
        # region and costs a little more per token than dense compute.
        per_row = costs.dense.predict([1.0])
        costs.sparse.set_prior([0.0, SPARSE_OVERHEAD * per_row], strength=1.0)

    def observe_sparse_load(self, block: int, demand: BlockDemand, nbytes: int) -> None:
        self.costs[block].load_bytes.add([demand.rows, demand.work], float(nbytes))

    def observe_bandwidth(self, nbytes: int, seconds: float) -> None:
        if seconds <= 0 or nbytes < 1 << 16:
            return
        rate = nbytes / seconds
        weight = 0.5 if self._bw_seen else 1.0
        self.bandwidth = (1 - weight) * self.bandwidth + weight * rate
        self._bw_seen += 1

    # planning
    @property
    def calibrated(self) -> bool:
        return all(c.dense.seen and c.sparse.seen for c in self.costs)

    def calibration_modes(self) -> list[bool] | None:
        """The modes of a measuring step while costs are unknown, else None."""
        if any(not c.dense.seen for c in self.costs):
            return [False] * self.blocks
        if any(not c.sparse.seen for c in self.costs):
            return [True] * self.blocks
        return None

    def estimate(self, modes: list[bool], demands: list[BlockDemand]) -> float:
        compute, load = [], []
        for i, (sparse, d) in enumerate(zip(modes, demands, strict=True)):
            costs = self.costs[i]
            if sparse:
                compute.append(costs.sparse.predict([d.rows, d.work]))
                load.append(costs.load_bytes.predict([d.rows, d.work]) / self.bandwidth)
            else:
                compute.append(costs.dense.predict([d.rows]))
                load.append(d.input_bytes / self.bandwidth
                            if input_sparse(modes, i, d.is_up) else 0.0)
        return simulate(compute, load)

    def choose(self, demands: list[BlockDemand]) -> list[bool]:
        calibrating = self.calibration_modes()
        if calibrating is not None:
            return calibrating
        best: tuple[float, list[bool]] | None = None
        for combo in itertools.product((True, False), repeat=self.blocks):
            modes = list(combo)
            cost = self.estimate(modes, demands)
            if best is None or cost < best[0]:
                best = (cost, modes)
        assert best is not None
        return best[1]
