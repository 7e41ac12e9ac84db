"""The mask-aware UNet forward, its regions and the per-block planner, on the tiny inpainting UNet.

* Consistency: record one forward, then run the masked forward on the same
  input: whatever the region and whichever blocks run sparse or dense, the
  output equals the plain diffusers forward (the cache holds exactly what
  fresh computation would give), for one request and for a batch of two
  requests with different masks and row counts, with the loads overlapped
  or not.
* Approximation: with a changed input inside the region the masked output
  moves towards the dense one there and stays the template's outside.
* Regions: the halo dilates the mask; coarser levels cover their children;
  a convolution gather reads the ring around its outputs.
* Planner: with slow loads it recomputes blocks instead of waiting; with
  fast loads it computes only the region.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from services.denoiser.activation_cache import ActivationCache, CacheSettings
from services.denoiser.activation_recorder import ActivationRecorder
from services.denoiser.block_planner import BlockDemand, BlockPlanner, simulate
from services.denoiser.cache_loader import CacheLoader, RecordRows
from services.denoiser.edit_regions import RegionPlan, latent_mask
from services.denoiser.masked_unet import MaskedUnet, StepInputs, supports

TOL = 1e-5


@pytest.fixture(scope="module")
def unet(tiny_models: Path):  # type: ignore[no-untyped-def]
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_models / "tiny-sd-inpainting" / "unet",
                                                local_files_only=True).eval()


def inputs(unet, rows: int, seed: int, side: int = 16) -> StepInputs:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    dim = unet.config.cross_attention_dim
    return StepInputs(torch.randn(rows, 9, side, side, generator=gen),
                      torch.full((rows,), 601.0, dtype=torch.float64),
                      torch.randn(rows, 77, dim, generator=gen))


def recorded(unet, step: StepInputs, tmp: Path, name: str):  # type: ignore[no-untyped-def]
    recorder = ActivationRecorder(unet, torch.float32)
    rows = step.sample.shape[0]
    with torch.inference_mode(), recorder.capture({name: slice(0, rows)}) as captured:
        out = unet(step.sample, step.timesteps, step.encoder).sample
    cache = ActivationCache(CacheSettings(memory_dir=str(tmp), dtype="float32"))
    cache.put(name, [captured[name]])
    reader = cache.get(name)
    assert reader is not None
    return out, reader


def box(side: int, top: int, left: int, h: int, w: int) -> torch.Tensor:
    mask = torch.zeros(side, side, dtype=torch.bool)
    mask[top:top + h, left:left + w] = True
    return mask


def test_the_tiny_inpainting_unet_is_supported(unet) -> None:  # type: ignore[no-untyped-def]
    assert supports(unet)


@pytest.mark.parametrize("overlap", [True, False])
def test_masked_forward_on_the_recorded_input_equals_the_dense_forward(
        unet, tmp_path: Path, overlap: bool) -> None:  # type: ignore[no-untyped-def]
    step = inputs(unet, 2, seed=1)
    expected, reader = recorded(unet, step, tmp_path, "a")
    masked = MaskedUnet(unet)
    loader = CacheLoader(overlap=overlap)
    n = len(masked.blocks)
    combos = [[True] * n, [False] * n] + [list(c) for c in itertools.islice(
        itertools.product((True, False), repeat=n), 5, None, 58)]
    for halo, modes in itertools.product((0, 2), combos):
        plan = RegionPlan(box(16, 3, 5, 4, 6)[None], [2], halo=halo, levels=2)
        load = loader.start([RecordRows(reader, 0, 2)], plan, masked.blocks, modes)
        with torch.inference_mode():
            out = masked.forward(step, plan, modes, load)
        assert (out - expected).abs().max() <= TOL, (halo, modes)


def test_a_batch_of_two_edits_with_different_masks_and_rows(unet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first, second = inputs(unet, 2, seed=2), inputs(unet, 1, seed=3)
    out_a, rec_a = recorded(unet, first, tmp_path / "a", "a")
    out_b, rec_b = recorded(unet, second, tmp_path / "b", "b")
    masks = torch.stack([box(16, 0, 0, 3, 3), box(16, 9, 4, 7, 12)])
    plan = RegionPlan(masks, [2, 1], halo=1, levels=2)
    masked = MaskedUnet(unet)
    step = StepInputs(torch.cat([first.sample, second.sample]),
                      torch.cat([first.timesteps, second.timesteps]),
                      torch.cat([first.encoder, second.encoder]))
    modes = [True, True, False, True, True, True, True]
    load = CacheLoader().start([RecordRows(rec_a, 0, 2), RecordRows(rec_b, 0, 1)], plan,
                               masked.blocks, modes)
    with torch.inference_mode():
        out = masked.forward(step, plan, modes, load)
    assert (out - torch.cat([out_a, out_b])).abs().max() <= TOL


def test_a_changed_region_is_recomputed_and_the_rest_kept(unet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    step = inputs(unet, 2, seed=4)
    template_out, reader = recorded(unet, step, tmp_path, "t")
    region = box(16, 4, 4, 6, 6)
    plan = RegionPlan(region[None], [2], halo=1, levels=2)
    edited = step.sample.clone()
    edited[:, :, region] += 1.0
    masked = MaskedUnet(unet)
    modes = [True] * len(masked.blocks)
    load = CacheLoader().start([RecordRows(reader, 0, 2)], plan, masked.blocks, modes)
    with torch.inference_mode():
        out = masked.forward(StepInputs(edited, step.timesteps, step.encoder), plan, modes, load)
        dense = unet(edited, step.timesteps, step.encoder).sample
    inside = plan.levels[0].region.mask[0]
    assert torch.equal(out[:, :, ~inside], template_out[:, :, ~inside])
    moved = (dense - template_out)[:, :, region].abs().mean()
    left = (dense - out)[:, :, region].abs().mean()
    assert left < 0.5 * moved


def test_regions_halo_levels_and_gathers() -> None:
    mask = box(8, 3, 3, 1, 1)
    plan = RegionPlan(mask[None], [2], halo=1, levels=2)
    fine, coarse = plan.levels[0].region, plan.levels[1].region
    assert fine.counts == [9, 9]                       # 3x3 after the halo, both CFG rows
    assert coarse.grid.height == 4 and coarse.counts == [4, 4]  # rows 2..4 -> 1..2 in both axes
    gather = plan.levels[0].resnet.conv2
    assert gather.src.numel() == 2 * 25                # a 5x5 ring around the 3x3 region
    assert plan.levels[0].resnet.conv1.src.numel() == 2 * 49
    assert plan.levels[0].resnet.input.ring.numel() == 2 * (49 - 9)
    image_mask = torch.zeros(1, 1, 64, 64)
    image_mask[..., 8:9, 60:64] = 1.0                  # one white row at the border
    tokens = latent_mask(image_mask, 8)
    assert tokens.shape == (8, 8) and tokens.sum() == 1 and tokens[1, 7]


def test_planner_recomputes_when_loads_would_stall_and_loads_when_cheap() -> None:
    planner = BlockPlanner(3)
    demands = [BlockDemand(rows=2, work=0.2, input_bytes=10_000_000) for _ in range(3)]
    assert planner.choose(demands) == [False] * 3      # measuring dense first
    for i in range(3):
        planner.observe_compute(i, False, demands[i], 0.10)
    assert planner.choose(demands) == [True] * 3       # then sparse
    for i in range(3):
        planner.observe_compute(i, True, demands[i], 0.03)
        planner.observe_sparse_load(i, demands[i], 4_000_000)
    planner.bandwidth = 1e9                            # 4 ms per block: load is cheap
    assert planner.choose(demands) == [True] * 3
    planner.bandwidth = 2e7                            # 200 ms per block: recompute instead
    assert planner.choose(demands) == [False] * 3


def test_pipeline_simulation_overlaps_the_next_load_with_compute() -> None:
    assert simulate([1.0, 1.0], [0.0, 1.0]) == pytest.approx(2.0)   # loaded during block 0
    assert simulate([1.0, 1.0], [1.0, 1.0]) == pytest.approx(3.0)   # first load is a bubble
    assert simulate([0.1, 0.1], [0.0, 1.0]) == pytest.approx(1.1)   # compute waits on the load
