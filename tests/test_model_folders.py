"""Model folders as users have them (tests/odd_folders.py, written with the library's own
``save_pretrained`` options beside the tiny tree).

Served, and equal to diffusers loading the same folder (<= 1e-5): fp16-variant-only weights,
sharded weights with an index, pickled and safetensors weights side by side (the safetensors
load). Skipped with a reason, the fleet serving the others: pickled-only weights, a partial
copy without its UNet weights, a sharded copy missing a shard. The reasons show in the model
store, in ListModels (kind "unavailable") and in ``dfleet status``; a request naming such a
model gets FAILED_PRECONDITION naming ``model``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dfleet
from services.common.model_store import ModelStore
from tests.diffusers_reference import reference_images
from tests.odd_folders import SERVED

SKIPPED = {"tiny-sd-pickled": "pickled weights", "tiny-sd-partial": "holds no weights",
           "tiny-sd-lost-shard": "shard"}


def test_the_store_serves_some_and_skips_the_rest_with_reasons(tiny_models: Path) -> None:
    store = ModelStore(tiny_models)
    names = {e.name for e in store.entries()}
    assert set(SERVED) <= names
    skipped = store.skipped()
    for name, reason in SKIPPED.items():
        assert name not in names and reason in skipped[name], skipped
    assert "tiny-sd" in names and "tiny-sdxl" in names   # the others still serve


@pytest.mark.parametrize("model", SERVED)
def test_served_folders_equal_diffusers(fleet: Any, tiny_models: Path, model: str) -> None:
    spec = dict(prompt="a red fox", seed=3, steps=6, model=model)
    with dfleet.Client(fleet.gateway_address, timeout=120) as client:
        result = client.generate(return_pixels=True, **spec)
    variant = "fp16" if model.endswith("fp16") else None
    expected = reference_images(tiny_models, variant=variant, **spec)[0]
    assert result.pixels is not None
    assert np.abs(result.pixels - expected).max() <= 1e-5


def test_skipped_folders_are_shown_and_refused(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        unavailable = {m.name: m.reason for m in client.models() if m.kind == "unavailable"}
        for name in SKIPPED:
            assert SKIPPED[name] in unavailable[name]
            with pytest.raises(dfleet.FleetError) as failure:
                client.generate("a cat", model=name, seed=1, steps=2)
            assert failure.value.code.name == "FAILED_PRECONDITION"
            assert failure.value.field == "model"
        client.generate("a cat", seed=1, steps=2)
    fleet.write_state(Path(fleet.state_dir) / "fleet.json")   # what `dfleet up` leaves
    status = subprocess.run([sys.executable, "-m", "dfleet", "status", "--state-dir",
                             str(fleet.state_dir)], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    for name in SKIPPED:
        assert f"model {name} is unavailable" in status.stdout
