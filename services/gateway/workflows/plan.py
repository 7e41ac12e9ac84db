"""One run of a workflow, bound to its request: what each node computes from.

The denoise node's parameters and attachments are the request's
:class:`~services.gateway.generation.Generation`; the plan holds the rest: each text encode's
prompt, each AR node's prompt, each VAE encode's prepared images, and which nodes this run
skips (a negative prompt without guidance). A plain request's plan is made from its validated
fields (:func:`builtin_plan`); a registered workflow's from its inputs (:mod:`.binding`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from services.common.families import PromptInput
from services.gateway.workflows.registry import Registered


@dataclass(frozen=True)
class PreparedImage:
    """A VAE encode node's images, preprocessed for the VAE."""

    init: torch.Tensor | None = None     # image-to-image, or inpainting below strength 1
    masked: torch.Tensor | None = None   # inpainting: the image without the masked area
    mask: torch.Tensor | None = None     # inpainting: [1, 1, H, W], white = repaint


@dataclass
class Plan:
    registered: Registered
    texts: dict[str, PromptInput] = field(default_factory=dict)       # text_encode node
    prompts: dict[str, str] = field(default_factory=dict)             # ar_embed node
    images: dict[str, PreparedImage] = field(default_factory=dict)    # vae_encode node
    skipped: frozenset[str] = frozenset()

    @property
    def workflow_id(self) -> str:
        return self.registered.workflow_id


def builtin_plan(registered: Registered, prompt: str, negative_prompt: str, zero_negative: bool,
                 do_cfg: bool, image: PreparedImage | None) -> Plan:
    """The plan of a built-in workflow (:mod:`.builtins`) for a validated plain request."""
    plan = Plan(registered, texts={"prompt": PromptInput(prompt),
                                   "negative": PromptInput(negative_prompt, zero_negative)},
                skipped=frozenset() if do_cfg else frozenset({"negative"}))
    if image is not None:
        plan.images["encode"] = image
    return plan
