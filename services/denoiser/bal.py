"""Bounded asynchronous LoRA loading (BAL): when a request's LoRAs join its steps.

A request starts denoising without its LoRAs while they load, and they are
merged in at the first step boundary after they are ready, but never later
than step K: a request that reaches step K without them waits. K = 0 waits
before the first step, which is the exact computation.

K comes from the request, or, for ``-1``, from the stored profile of its
(model, LoRA) pairs (see :mod:`services.denoiser.bal_profile`); the smallest
K of the request's LoRAs bounds it, and a LoRA without a profile means 0.
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from services.common.lora_merge import NO_PATCH, Patch
from services.denoiser.addons.base import LoraLayers

log = logging.getLogger("dfleet.denoiser")

__all__ = ["BalProfile", "BalProfiles", "LoraGate", "LoraLayers"]
USE_PROFILE = -1
SIMILARITY_THRESHOLD = 0.99


class LoraGate:
    """Per request: the patch for the next step, and whether that step may run yet."""

    def __init__(self, patch: Patch, loaded: Future[LoraLayers] | None, bound: int) -> None:
        if patch and loaded is None:
            raise ValueError("a request with LoRAs needs their loading future")
        self._patch = patch
        self._loaded = loaded
        self.bound = max(0, bound)
        self.layers: LoraLayers = {}
        self.patched = not patch
        self.patched_at: int | None = 0 if not patch else None

    @property
    def patch(self) -> Patch:
        """The patch merged for the next step: none until the LoRAs joined."""
        return self._patch if self.patched else NO_PATCH

    @property
    def full_patch(self) -> Patch:
        return self._patch

    def loaded(self) -> bool:
        """Whether the layers are here (kept in ``layers``); raises what loading raised."""
        if self.layers or not self._patch:
            return True
        assert self._loaded is not None
        if not self._loaded.done():
            return False
        self.layers = self._loaded.result()
        return True

    def ready_for(self, step: int) -> bool:
        """Whether step ``step`` may run now; merges the LoRAs in once they are loaded.

        Raises what loading raised.
        """
        if self.patched:
            return True
        if self.loaded():
            self.patched = True
            self.patched_at = step
            return True
        return step < self.bound


@dataclass(frozen=True)
class BalProfile:
    """Per (model, LoRA): cosine similarity of latents with and without the LoRA, per step."""

    model: str
    lora: str
    steps: int
    similarity: list[float]
    threshold: float = SIMILARITY_THRESHOLD
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def bound(self) -> int:
        """K: the first step whose similarity is below the threshold (all steps if none is)."""
        return next((i for i, s in enumerate(self.similarity) if s < self.threshold),
                    len(self.similarity))


def _file_stem(model: str, lora: str) -> str:
    safe = re.compile(r"[^A-Za-z0-9._-]")
    return f"{safe.sub('_', model)}__{safe.sub('_', lora)}"


class BalProfiles:
    """JSON files ``<dir>/<model>__<lora>.json``; read once per (model, LoRA), then cached."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._cache: dict[tuple[str, str], BalProfile] = {}

    def path(self, model: str, lora: str) -> Path:
        return self.folder / f"{_file_stem(model, lora)}.json"

    def save(self, profile: BalProfile) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(profile.model, profile.lora)
        data = {"model": profile.model, "lora": profile.lora, "steps": profile.steps,
                "threshold": profile.threshold, "bound": profile.bound,
                "similarity": profile.similarity, **profile.extra}
        path.write_text(json.dumps(data, indent=1))
        self._cache[(profile.model, profile.lora)] = profile
        return path

    def get(self, model: str, lora: str) -> BalProfile | None:
        """The stored profile; a missing one is looked for again next time."""
        key = (model, lora)
        if self._cache.get(key) is None:
            path = self.path(model, lora)
            if not path.is_file():
                return None
            data = json.loads(path.read_text())
            self._cache[key] = BalProfile(
                model=data["model"], lora=data["lora"], steps=int(data["steps"]),
                similarity=[float(s) for s in data["similarity"]],
                threshold=float(data.get("threshold", SIMILARITY_THRESHOLD)))
        return self._cache[key]

    def bound(self, requested: int, model: str, loras: list[str], steps: int) -> int:
        """The K to use: ``requested`` itself, or for -1 the profiles' smallest K, scaled to
        ``steps`` when the profile was measured with another step count, and below ``steps``:
        a profile never lets a request finish without its LoRAs."""
        if requested != USE_PROFILE or not loras:
            return max(0, requested)
        bounds = []
        for lora in loras:
            profile = self.get(model, lora)
            if profile is None:
                log.info("no BAL profile for %s with %s: exact", model, lora)
                return 0
            bounds.append(profile.bound * steps // max(1, profile.steps))
        return max(0, min(min(bounds), steps - 1))
