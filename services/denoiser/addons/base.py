"""The add-on interface of the step loop: what a work's attachments may do at each step.

A work (:class:`~services.denoiser.work.DenoiseWork`) is a sampler (a request's latents and
scheduler, or a partner replica's incoming rows) plus an ordered list of add-ons. The loop
(:mod:`services.denoiser.engine`) and the batch runner (:mod:`services.denoiser.step_batch`)
call only the hooks below, in this order for each step of each work:

1. ``ready(step)``: may the step start now? (a LoRA loaded by its BAL bound). May raise: the
   work then fails.
2. ``batch_key()``: works whose keys are equal over all their add-ons may share a model batch
   (``None``: this add-on does not restrict batching).
3. ``weight_patch()``: the weights the model must hold for this step (a LoRA patch); the
   batch's works share it, since it is part of their batch key.
4. ``before_model(rows)``: sees the step's rows before the model runs: may send the step to
   another service (ControlNet replicas, the CFG partner), take rows away (the partner's), or
   add per-row inputs in ``rows.extra`` (IP-Adapter image embeddings).
5. ``wrap_forward(forward, works)``: batch level, asked of the batch's first work: wraps or
   replaces the model forward for this batch (template edits record or compute only the mask;
   IP-Adapter feeds its attention layers). Equal batch keys make every work wrap alike.
6. ``residuals()``: what to add to the model's skip connections, read between its halves
   (ControlNet), so the first half overlaps the remote computation.
7. ``after_model(noise)``: this work's rows of the model output; returns the noise for the
   next add-on (and in the end for the guider and scheduler), or ``None`` while it waits for
   something (the partner's rows). The loop then calls ``after_model`` again, with the same
   noise, until it returns a tensor.
8. ``step_outputs(latents, step)``: tensors to report with the step's progress (previews).

When the work ends, ``metadata()`` says what the add-on reports with the result and
``close(error)`` frees what it holds (streams, leases), whatever the outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from services.common.controlnet_calls import Residuals
from services.common.lora_merge import NO_PATCH, LoraLayer, Patch

LoraLayers = dict[str, dict[str, LoraLayer]]   # LoRA name -> module path -> layer


@dataclass(frozen=True)
class WeightPatch:
    """Weights merged into the model for a step: which (LoRA, scale) pairs, and their layers."""

    patch: Patch = NO_PATCH
    layers: LoraLayers = field(default_factory=dict, compare=False)


@dataclass
class StepRows:
    """One work's rows of a model batch for one step."""

    sample: torch.Tensor                   # model input rows (with any extra input channels)
    latents: torch.Tensor                  # the scaled latents alone (what a ControlNet reads)
    timestep: torch.Tensor                 # 0-d
    embeds: torch.Tensor                   # per-row text conditioning
    kinds: tuple[str, ...]                 # row groups (guider kinds), one row per image each
    added_cond: dict[str, torch.Tensor] | None = None   # family conditioning (SDXL)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # per-row add-on inputs
    step: int = 0
    # inputs every row of a model batch shares (Flux: the position ids of the image and text
    # tokens); equal group keys make them equal, so a batch passes its first work's
    shared: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.sample.shape[0])

    def without(self, kind: str) -> StepRows:
        """These rows less one group (the rows a CFG partner takes)."""
        keep = [i for i, k in enumerate(self.kinds) if k != kind]
        per = self.rows // len(self.kinds)
        index = torch.tensor([g * per + r for g in keep for r in range(per)])

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, index.to(t.device))
        return replace(
            self, sample=pick(self.sample), latents=pick(self.latents), embeds=pick(self.embeds),
            kinds=tuple(k for k in self.kinds if k != kind),
            added_cond={k: pick(v) for k, v in self.added_cond.items()}
            if self.added_cond else None,
            extra={k: pick(v) for k, v in self.extra.items()})

    def only(self, kind: str) -> StepRows:
        """One group of these rows."""
        rest = [k for k in self.kinds if k != kind]
        rows = self
        for other in rest:
            rows = rows.without(other)
        return rows


@dataclass
class BatchInput:
    """The rows of every work of a batch, concatenated, as the model forward takes them."""

    sample: torch.Tensor
    timesteps: torch.Tensor                # one per row
    embeds: torch.Tensor
    added_cond: dict[str, torch.Tensor] | None
    extra: dict[str, torch.Tensor]
    residuals: Callable[[], Residuals | None]   # read between the model's halves
    shared: dict[str, torch.Tensor] = field(default_factory=dict)   # the same for every row


Forward = Callable[[BatchInput], torch.Tensor]


@runtime_checkable
class DrawsLatents(Protocol):
    """An add-on spec with images a sampler draws latents of, from their VAE moments, with
    the request's generators before its initial noise (the Flux ControlNet pipeline encodes
    its control images first); the add-on finds them in ``BuildContext.drawn``."""

    def latent_moments(self) -> list[torch.Tensor]: ...


def add_residuals(total: Residuals | None, more: Residuals) -> Residuals:
    """Two ControlNets' residuals summed list by list (as their multi-ControlNet models do)."""
    if total is None:
        return more
    return ([a + b for a, b in zip(total[0], more[0], strict=True)],
            [a + b for a, b in zip(total[1], more[1], strict=True)])


class Addon:
    """Something attached to a denoise work. Every hook's default does nothing."""

    name: ClassVar[str] = ""

    def batch_key(self) -> Hashable | None:
        return None

    def ready(self, step: int) -> bool:
        return True

    def weight_patch(self) -> WeightPatch | None:
        return None

    def before_model(self, rows: StepRows) -> StepRows:
        return rows

    def wrap_forward(self, forward: Forward, works: Sequence[Any]) -> Forward:
        return forward

    def residuals(self) -> Residuals | None:
        return None

    def after_model(self, noise: torch.Tensor) -> torch.Tensor | None:
        return noise

    def step_outputs(self, latents: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        return {}

    def metadata(self) -> dict[str, str]:
        return {}

    def close(self, error: Exception | None) -> None:
        return None
