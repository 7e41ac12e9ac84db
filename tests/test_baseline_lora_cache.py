"""The baseline's best case: LoRAs kept loaded per worker (LRU) give the images of plain diffusers.

Covers: with a cache of one LoRA, a sequence that loads, keeps, evicts and reloads LoRAs,
asks for two at once and for none in between, gives every image within 1e-5 of a plain
diffusers pipeline that loads the request's LoRAs itself; the LoRA load time reported for a
cache hit is far below a miss's (order only, no timing threshold); bad --lora-cache values
are refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import dfleet
from bench.baseline_process import BaselineProcess
from bench.baseline_server import parse_settings
from tests.diffusers_reference import reference

TOLERANCE = 1e-5
SEQUENCE = [[("tiny-lora-r4", 1.0)], [("tiny-lora-r4", 0.5)], [], [("tiny-lora-r8", 0.9)],
            [("tiny-lora-r4", 1.0)], [("tiny-lora-r4", 0.6), ("tiny-lora-r8", 0.9)], []]


@pytest.fixture(scope="module")
def cached_baseline(tiny_models: Path) -> Iterator[str]:
    with BaselineProcess(tiny_models, workers=1, threads=1, lora_cache=1) as server:
        yield server.address


def test_cached_loras_give_the_diffusers_images(cached_baseline: str,
                                                tiny_models: Path) -> None:
    with dfleet.Client(cached_baseline, timeout=300) as client:
        for i, loras in enumerate(SEQUENCE):
            got = client.generate("a portrait", seed=30 + i, steps=6, return_pixels=True,
                                  loras=[dfleet.Lora(n, scale=s) for n, s in loras])
            expected = reference(tiny_models, prompt="a portrait", seed=30 + i, steps=6,
                                 loras=loras)
            assert got.pixels is not None
            assert np.abs(got.pixels - expected).max() <= TOLERANCE, (i, loras)


def test_bad_lora_cache_is_refused(tiny_models: Path) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--models-dir", str(tiny_models), "--lora-cache", "-1"])
