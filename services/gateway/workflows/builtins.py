"""The request kinds as workflows, registered by every gateway for the models it serves.

A plain Generate request (no ``workflow_id``) runs as one of them: ``txt2img.MODEL``,
``img2img.MODEL`` or ``inpaint.MODEL`` by whether it gives an image and a mask; its add-ons
(ControlNets, LoRAs, IP-Adapters, a template edit, CFG parallelism, previews) attach to the
denoise node as they always did. ``ar_t2i`` (when the models folder has an AR model and an
embedding adapter that fits it and a base model) renders an AR model's image embeddings: the
adapter's output replaces the prompt embeddings of the denoiser, whose pooled embeddings (where
its family has them) come from an empty prompt. A Flux-family decoder is preferred; without one,
a base model of another family whose text width fits the adapter decodes, without guidance by
default (the graph has no negative prompt).
"""

from __future__ import annotations

import logging

from services.common.ar_models import adapter_widths, ar_width
from services.common.model_store import ModelStore
from services.gateway.workflows.compatibility import prompt_width
from services.gateway.workflows.spec import (
    Binding,
    Const,
    FromInput,
    FromNode,
    InputDecl,
    Node,
    Operator,
    OutputDecl,
    ValueType,
    Workflow,
)

log = logging.getLogger("dfleet.gateway")
T = ValueType


def _common_inputs(guidance: float) -> tuple[InputDecl, ...]:
    return (InputDecl("prompt", T.TEXT, None, "what to draw"),
            InputDecl("negative_prompt", T.TEXT, Const(""), "what not to draw"),
            InputDecl("seed", T.INT, Const(0), "image i is drawn from seed + i"),
            InputDecl("steps", T.INT, Const(0), "0: the gateway's default"),
            InputDecl("guidance_scale", T.FLOAT, Const(guidance), "<= 1: no guidance"),
            InputDecl("scheduler", T.TEXT, Const(""), "empty: the model's own"),
            InputDecl("num_images", T.INT, Const(1), "1-8"),
            InputDecl("width", T.INT, Const(0), "0: the model's default (or the image's)"),
            InputDecl("height", T.INT, Const(0), "0: the model's default (or the image's)"))


def _denoise_inputs(latent: str) -> dict[str, FromInput | FromNode]:
    return {"positive": FromNode("prompt", "conditioning"),
            "negative": FromNode("negative", "conditioning"),
            "latent": FromNode(latent, "latent"),
            **{name: FromInput(name) for name in ("seed", "steps", "guidance_scale",
                                                  "scheduler", "num_images")}}


def request_kind(kind: str, model: str, guidance: float) -> Workflow:
    """``txt2img``, ``img2img`` or ``inpaint`` on ``model``."""
    size = {"width": FromInput("width"), "height": FromInput("height")}
    inputs = _common_inputs(guidance)
    if kind == "txt2img":
        latent = Node("latent", Operator.LATENT_INIT, inputs=size)
        denoise = _denoise_inputs("latent")
    else:
        image = {"image": FromInput("image"), **size}
        inputs += (InputDecl("image", T.IMAGE, None, "the image to start from"),
                   InputDecl("strength", T.FLOAT, Const(0.0),
                             "0: 0.8 for image-to-image, 1.0 to inpaint"))
        if kind == "inpaint":
            image["mask"] = FromInput("mask")
            inputs += (InputDecl("mask", T.MASK, None, "white = repaint"),)
        latent = Node("encode", Operator.VAE_ENCODE, model, "inpaint" if kind == "inpaint"
                      else "image", image)
        denoise = {**_denoise_inputs("encode"), "strength": FromInput("strength")}
    nodes = (
        Node("prompt", Operator.TEXT_ENCODE, model, "prompt", {"text": FromInput("prompt")}),
        Node("negative", Operator.TEXT_ENCODE, model, "negative",
             {"text": FromInput("negative_prompt")}),
        latent,
        Node("denoise", Operator.DENOISE, model, inputs=denoise),
        Node("decode", Operator.VAE_DECODE, model, inputs={"latents": FromNode("denoise",
                                                                               "latents")}))
    return Workflow(f"{kind}.{model}", nodes, (OutputDecl("image", FromNode("decode", "image")),),
                    inputs, f"{kind} on {model} (the plain request kind)")


def ar_t2i(ar_model: str, adapter: str, decoder: str, guidance: float,
           pooled: bool = True) -> Workflow:
    """``pooled``: the decoder's family takes pooled text embeddings (from an empty prompt)."""
    inputs = tuple(d for d in _common_inputs(guidance)
                   if d.name not in ("negative_prompt", "scheduler"))
    adapt_inputs: dict[str, Binding] = {"embeddings": FromNode("ar", "embeddings")}
    empty_prompt: tuple[Node, ...] = ()
    if pooled:
        adapt_inputs["pooled"] = FromNode("pooled", "conditioning")
        empty_prompt = (Node("pooled", Operator.TEXT_ENCODE, decoder, "prompt",
                             {"text": Const("")}),)
    nodes = (
        Node("ar", Operator.AR_EMBED, ar_model, inputs={"prompt": FromInput("prompt")}),
        *empty_prompt,
        Node("adapt", Operator.EMBED_ADAPTER, adapter, inputs=adapt_inputs),
        Node("latent", Operator.LATENT_INIT,
             inputs={"width": FromInput("width"), "height": FromInput("height")}),
        Node("denoise", Operator.DENOISE, decoder, inputs={
            "positive": FromNode("adapt", "conditioning"), "latent": FromNode("latent", "latent"),
            **{n: FromInput(n) for n in ("seed", "steps", "guidance_scale", "num_images")}}),
        Node("decode", Operator.VAE_DECODE, decoder,
             inputs={"latents": FromNode("denoise", "latents")}))
    return Workflow("ar_t2i", nodes, (OutputDecl("image", FromNode("decode", "image")),), inputs,
                    f"text to image through {ar_model}'s predicted image embeddings, adapted by "
                    f"{adapter} and rendered by {decoder}")


def ar_combination(store: ModelStore) -> tuple[str, str, str] | None:
    """The first (AR model, adapter, base model) whose widths fit, Flux models first, or
    None."""
    decoders = sorted((e.family != "flux", e.name) for e in store.entries("base"))
    for ar in sorted(e.name for e in store.entries("ar_embed")):
        width = ar_width(store.get(ar, ("ar_embed",)).path)
        for adapter in sorted(e.name for e in store.entries("embed_adapter")):
            width_in, width_out = adapter_widths(store.get(adapter, ("embed_adapter",)).path)
            for _, decoder in decoders:
                if width_in == width and width_out == prompt_width(store, decoder):
                    return ar, adapter, decoder
    return None


def builtin_workflows(store: ModelStore, guidance: float) -> list[Workflow]:
    found = []
    for entry in sorted(store.entries(), key=lambda e: e.name):
        if entry.kind not in ("base", "inpainting"):
            continue
        family = store.family(entry.name)
        default = family.default_guidance or guidance   # Flux's distilled guidance: 3.5
        kinds = (("txt2img", "img2img", "inpaint") if family.inpaints_on_base  # Flux
                 else ("txt2img", "img2img")) if entry.kind == "base" else ("inpaint",)
        found += [request_kind(kind, entry.name, default) for kind in kinds]
    combination = ar_combination(store)
    if combination is not None:
        family = store.family(combination[2])
        pooled = len(family.text_components) > 1
        # the graph has no negative prompt: no guidance where guidance needs one
        default = (family.default_guidance or guidance) if not family.classifier_free_guidance \
            else 1.0
        found.append(ar_t2i(*combination, default, pooled))
    return found


def kind_of(has_image: bool, has_mask: bool) -> str:
    return "inpaint" if has_mask else ("img2img" if has_image else "txt2img")
