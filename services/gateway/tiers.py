"""Quality tiers of a model: the model itself (``full``), or its slimmed tier (``fast``).

A slimmed tier is a pipeline folder named ``<model>-slim`` holding ``tier.json`` (written by
``python -m training slim``): a narrower UNet distilled from the full one, with the same VAE
and text encoder. The fleet serves it as a model of its own (its own nodes, scaled
separately); a request chooses with ``quality``:

    full   the model asked for (the default)
    fast   its slimmed tier
    auto   the full tier, unless its estimated queue and run time would miss the request's
           deadline and the slim tier's would not

Add-ons made for the full UNet's shapes (ControlNet residuals, LoRA layers, IP-Adapters, a
template's cached activations) do not fit the slim one: such a request never goes to it.
"""

from __future__ import annotations

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.model_store import ModelStore
from services.gateway.generation import Generation

QUALITIES = ("full", "fast", "auto")
SLIM_SUFFIX = "-slim"
# Attachments that do not depend on the UNet's shapes; any other keeps a request on full.
SHAPE_FREE = frozenset({"preview", "cfg_partner"})


def slim_tier_of(store: ModelStore, model: str) -> str:
    """The name of ``model``'s slimmed tier, or "" when the fleet has none."""
    name = model + SLIM_SUFFIX
    entry = next((e for e in store.entries("base") if e.name == name), None)
    return name if entry is not None and (entry.path / "tier.json").is_file() else ""


def _blocking_addons(gen: Generation) -> list[str]:
    return sorted({a.name for a in gen.attachments} - SHAPE_FREE)


def apply(quality: str, gen: Generation, store: ModelStore) -> None:
    """Checks ``quality`` and records on ``gen`` which tiers it may run on: ``fast`` switches
    the model now; ``auto`` keeps the slim tier's name for placement to decide."""
    quality = quality or "full"
    if quality not in QUALITIES:
        raise InvalidArgument(f"{quality!r} is not one of {', '.join(QUALITIES)}",
                              field="quality")
    gen.quality = quality
    if quality == "full":
        return
    slim = slim_tier_of(store, gen.model)
    blocking = _blocking_addons(gen)
    if quality == "fast":
        if not slim:
            raise FailedPrecondition(f"model {gen.model!r} has no slimmed tier "
                                     f"({gen.model + SLIM_SUFFIX!r} with tier.json)",
                                     field="quality")
        if blocking:
            raise InvalidArgument(f"the slimmed tier cannot run {', '.join(blocking)} (made "
                                  "for the full model's shapes); ask for quality full or auto",
                                  field="quality")
        use_slim(gen, slim)
        return
    if slim and not blocking:
        gen.slim_model = slim


def use_slim(gen: Generation, slim: str) -> None:
    gen.model, gen.tier, gen.slim_model = slim, "fast", ""


def misses(total_ms: float, deadline_left_s: float | None) -> bool:
    """Whether an estimate of ``total_ms`` would finish after the deadline."""
    return deadline_left_s is not None and total_ms / 1e3 > deadline_left_s
