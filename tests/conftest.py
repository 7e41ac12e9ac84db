"""Shared fixtures: the tiny model tree and a local fleet of real service processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Spinning OpenMP workers starve other threads (the activation cache loader, gRPC) when the
# machine is busy: a tiny-model forward then takes seconds instead of milliseconds.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded tiny model tree, written once per test session, with folders as users have
    them beside it (tests/odd_folders.py)."""
    from services.common.tiny_model import write_tiny_model
    from tests.odd_folders import write_odd_folders

    root = write_tiny_model(tmp_path_factory.mktemp("models"), seed=0)
    write_odd_folders(root)
    return root


@pytest.fixture(scope="session")
def fleet(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Redis plus one process per role; every tensor between services goes by shared memory."""
    from dfleet.local_fleet import LocalFleet

    local = LocalFleet(str(tiny_models), state_dir=str(tmp_path_factory.mktemp("fleet")),
                       env={"DFLEET_INLINE_MAX_BYTES": "1", "DFLEET_RECOVER_INTERVAL_S": "1",
                            "DFLEET_METRICS_PORT": "0",  # each replica's heartbeat says where
                            "DFLEET_ORPHAN_CLAIM_IDLE_S": "6",
                            "OMP_WAIT_POLICY": "PASSIVE",
                            "DFLEET_ACTIVATION_DIR": str(tmp_path_factory.mktemp("activations"))})
    with local:
        yield local
