"""A ComfyUI API-format workflow as a fleet workflow (docs/workflows.md has the table).

CheckpointLoaderSimple names the model of the text encode, denoise and VAE nodes;
CLIPTextEncode becomes text_encode (inputs ``prompt``, ``negative_prompt``, the file's text as
default); EmptyLatentImage latent_init (``width``, ``height``; batch_size as ``num_images``);
KSampler the denoise node (``seed``, ``steps``, ``guidance_scale``; sampler and scheduler as
one of the fleet's schedulers; denoise < 1 as ``strength``); VAEEncode / VAEEncodeForInpaint
vae_encode in mode image / inpaint; VAEDecode vae_decode; LoadImage an image input
(``image``, ``mask``, ``control_image``); SaveImage / PreviewImage an output; LoraLoader a LoRA
of the denoise node (strength_model, strength_clip); ControlNetLoader with
ControlNetApply(Advanced) a ControlNet of it (strength, start and end percent).

Refusals name the node id and class (:mod:`.comfyui_graph` checks the file's shape).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from services.common.errors import InvalidArgument
from services.common.model_store import ModelStore
from services.gateway.workflows.comfyui_graph import ComfyNode, Link, read
from services.gateway.workflows.spec import (
    Const,
    ControlNetUse,
    FromInput,
    FromNode,
    InputDecl,
    LoraUse,
    Node,
    Operator,
    OutputDecl,
    ValueType,
    Workflow,
)

# (sampler_name, scheduler) -> the fleet's scheduler of that algorithm and sigma schedule
SAMPLERS = {("euler", "normal"): "euler", ("euler_ancestral", "normal"): "euler_a",
            ("dpmpp_2m", "normal"): "dpmpp_2m", ("dpmpp_2m", "karras"): "dpmpp_2m_karras",
            ("dpmpp_sde", "normal"): "dpmpp_sde", ("ddim", "ddim_uniform"): "ddim",
            ("ddim", "normal"): "ddim", ("uni_pc", "normal"): "unipc", ("lcm", "normal"): "lcm"}
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
T = ValueType


@dataclass
class Conversion:
    nodes: dict[str, ComfyNode]
    store: ModelStore
    inputs: list[InputDecl] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def source(self, node: ComfyNode, name: str) -> ComfyNode:
        link = node.inputs[name]
        assert isinstance(link, Link)
        return self.nodes[link.node]

    def output_index(self, node: ComfyNode, name: str) -> int:
        link = node.inputs[name]
        assert isinstance(link, Link)
        return link.output

    def literal(self, node: ComfyNode, name: str) -> Any:
        value = node.inputs[name]
        if isinstance(value, Link):
            raise InvalidArgument(f"{node.label}: input {name!r} must be a value here, not a "
                                  "link", field=node.where(name))
        return value

    def declare(self, name: str, type: ValueType, default: Any, description: str) -> FromInput:
        taken = {d.name for d in self.inputs}
        unique, n = name, 2
        while unique in taken:
            unique, n = f"{name}_{n}", n + 1
        self.inputs.append(InputDecl(unique, type, None if default is None else Const(default),
                                     description))
        return FromInput(unique)


def fleet_name(value: str, node: ComfyNode, name: str, kinds: tuple[str, ...], what: str,
               store: ModelStore) -> str:
    """A file name of ComfyUI's model folders as the fleet's model name (the stem)."""
    stem = PureWindowsPath(PurePosixPath(value).name).name
    for suffix in WEIGHT_SUFFIXES:
        stem = stem.removesuffix(suffix)
    known = sorted(e.name for e in store.entries() if e.kind in kinds)
    if stem not in known:
        raise InvalidArgument(f"{node.label}: {what} {value!r} is not in the fleet (as "
                              f"{stem!r}); it has {', '.join(known) or 'none'}",
                              field=node.where(name))
    return stem


def convert(content: str, store: ModelStore, name: str) -> tuple[Workflow, list[str]]:
    """The workflow of an API-format file and the notes on what it means here."""
    nodes = read(content)
    c = Conversion(nodes, store)
    samplers = [n for n in nodes.values() if n.class_type == "KSampler"]
    if len(samplers) != 1:
        raise InvalidArgument(f"the fleet runs one sampler per workflow; the file has "
                              f"{len(samplers)} KSampler nodes", field="content")
    sampler = samplers[0]
    model, loras = _model_chain(c, sampler)
    positive_clip = _prompt(c, sampler, "positive", model)
    negative_clip = _prompt(c, sampler, "negative", model)
    if positive_clip[0] != negative_clip[0]:
        raise InvalidArgument(f"{sampler.label}: its prompts are encoded through different "
                              "LoRAs; the fleet patches both prompts alike", field=sampler.where())
    controlnets = _controlnets(c, sampler)
    graph = [Node("prompt", Operator.TEXT_ENCODE, model, "prompt",
                  {"text": positive_clip[1]}),
             Node("negative", Operator.TEXT_ENCODE, model, "negative",
                  {"text": negative_clip[1]})]
    latent_node, denoise_inputs = _latent(c, sampler, model)
    graph.append(latent_node)
    graph.append(Node("denoise", Operator.DENOISE, model, inputs={
        "positive": FromNode("prompt", "conditioning"),
        "negative": FromNode("negative", "conditioning"),
        "latent": FromNode(latent_node.id, "latent"), **denoise_inputs,
        **_sampling(c, sampler)}, controlnets=tuple(controlnets),
        loras=tuple(_loras(c, loras, positive_clip[0]))))
    outputs = _outputs(c, sampler, model, graph)
    _note_unused(c)
    workflow = Workflow(_name(name), tuple(graph), tuple(outputs), tuple(c.inputs),
                        "imported from a ComfyUI API-format workflow")
    return workflow, c.notes


def _note_unused(c: Conversion) -> None:
    """Nodes no output depends on (ComfyUI does not run them either)."""
    used: set[str] = set()
    todo = [n.id for n in c.nodes.values() if n.class_type in ("SaveImage", "PreviewImage")]
    while todo:
        node_id = todo.pop()
        if node_id not in used:
            used.add(node_id)
            todo += [v.node for v in c.nodes[node_id].inputs.values() if isinstance(v, Link)]
    for node in c.nodes.values():
        if node.id not in used:
            c.notes.append(f"{node.label}: no output depends on it; not converted")


def _name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name or "imported").lstrip(".-") or "imported"
    return ("_" + cleaned if cleaned[0].isdigit() else cleaned)[:64]


def _model_chain(c: Conversion, sampler: ComfyNode) -> tuple[str, list[ComfyNode]]:
    """The checkpoint under the sampler's model and the LoraLoaders in between, innermost
    first."""
    loras: list[ComfyNode] = []
    node = c.source(sampler, "model")
    while node.class_type == "LoraLoader":
        loras.insert(0, node)
        node = c.source(node, "model")
    return _checkpoint(c, node), loras


def _checkpoint(c: Conversion, node: ComfyNode, expected: str = "") -> str:
    """The fleet model a CheckpointLoaderSimple names (``expected``: the sampler's)."""
    assert node.class_type == "CheckpointLoaderSimple"
    name = fleet_name(c.literal(node, "ckpt_name"), node, "ckpt_name", ("base", "inpainting"),
                      "checkpoint", c.store)
    if expected and name != expected:
        raise InvalidArgument(f"{node.label}: checkpoint {name!r} is not the sampler's "
                              f"{expected!r}; the fleet runs one model's text encoder, "
                              "denoiser and VAE together", field=node.where("ckpt_name"))
    return name


def _prompt(c: Conversion, sampler: ComfyNode, which: str, model: str
            ) -> tuple[tuple[str, ...], FromInput]:
    """The LoraLoaders on the prompt's CLIP path (their ids) and its text as an input."""
    node, index = c.source(sampler, which), c.output_index(sampler, which)
    while node.class_type in ("ControlNetApply", "ControlNetApplyAdvanced"):
        port = "conditioning" if node.class_type == "ControlNetApply" else (
            "positive" if index == 0 else "negative")
        node, index = c.source(node, port), c.output_index(node, port)
    assert node.class_type == "CLIPTextEncode"
    clip_loras: list[str] = []
    clip = c.source(node, "clip")
    while clip.class_type == "LoraLoader":
        clip_loras.insert(0, clip.id)
        clip = c.source(clip, "clip")
    _checkpoint(c, clip, model)
    name = "prompt" if which == "positive" else "negative_prompt"
    return tuple(clip_loras), c.declare(name, T.TEXT, c.literal(node, "text"),
                                        f"{node.label}'s text")


def _controlnets(c: Conversion, sampler: ComfyNode) -> list[ControlNetUse]:
    """The ControlNets applied on the positive path, outermost last."""
    found: list[ControlNetUse] = []
    node = c.source(sampler, "positive")
    index = c.output_index(sampler, "positive")
    negative_path = _path_ids(c, sampler, "negative")
    only_negative = negative_path - _path_ids(c, sampler, "positive")
    if only_negative:
        node = c.nodes[sorted(only_negative)[0]]
        raise InvalidArgument(f"{node.label} conditions the negative prompt only; the fleet's "
                              "ControlNets condition both", field=node.where())
    while node.class_type in ("ControlNetApply", "ControlNetApplyAdvanced"):
        advanced = node.class_type == "ControlNetApplyAdvanced"
        loader = c.source(node, "control_net")
        name = fleet_name(c.literal(loader, "control_net_name"), loader, "control_net_name",
                          ("controlnet",), "ControlNet", c.store)
        image = c.source(node, "image")
        if image.class_type != "LoadImage" or c.output_index(node, "image") != 0:
            raise InvalidArgument(f"{node.label}: the control image must come from LoadImage",
                                  field=node.where("image"))
        if node.id not in negative_path:
            c.notes.append(f"{node.label}: applied to the negative prompt's rows too, as the "
                           "fleet's ControlNets are")
        if advanced and "vae" in node.inputs:
            c.notes.append(f"{node.label}: its vae input is not used (the ControlNets served "
                           "take the control image as pixels)")
        found.insert(0, ControlNetUse(
            name, c.declare("control_image", T.IMAGE, None, f"{image.label}: "
                            f"{c.literal(image, 'image')}"),
            float(c.literal(node, "strength")),
            float(c.literal(node, "start_percent")) if advanced else 0.0,
            float(c.literal(node, "end_percent")) if advanced else 1.0))
        port = "conditioning" if not advanced else ("positive" if index == 0 else "negative")
        node, index = c.source(node, port), c.output_index(node, port)
    return found


def _path_ids(c: Conversion, sampler: ComfyNode, which: str) -> set[str]:
    ids = set()
    node, index = c.source(sampler, which), c.output_index(sampler, which)
    while node.class_type in ("ControlNetApply", "ControlNetApplyAdvanced"):
        ids.add(node.id)
        port = "conditioning" if node.class_type == "ControlNetApply" else (
            "positive" if index == 0 else "negative")
        node, index = c.source(node, port), c.output_index(node, port)
    return ids


def _loras(c: Conversion, model_loras: list[ComfyNode], clip_ids: tuple[str, ...]
           ) -> list[LoraUse]:
    found = []
    by_id = {n.id: n for n in model_loras} | {i: c.nodes[i] for i in clip_ids}
    for node_id, node in by_id.items():
        name = fleet_name(c.literal(node, "lora_name"), node, "lora_name", ("lora",), "LoRA",
                          c.store)
        model_scale = float(c.literal(node, "strength_model")) if node in model_loras else 0.0
        clip_scale = float(c.literal(node, "strength_clip")) if node_id in clip_ids else 0.0
        found.append(LoraUse(name, model_scale, clip_scale))
    return found


def _latent(c: Conversion, sampler: ComfyNode, model: str) -> tuple[Node, dict[str, Any]]:
    source = c.source(sampler, "latent_image")
    denoise = float(c.literal(sampler, "denoise"))
    if source.class_type == "EmptyLatentImage":
        if denoise < 1.0:
            raise InvalidArgument(f"{sampler.label}: denoise {denoise} < 1 needs a latent from "
                                  "VAEEncode (image to image)", field=sampler.where("denoise"))
        return Node("latent", Operator.LATENT_INIT, inputs={
            "width": c.declare("width", T.INT, c.literal(source, "width"), "pixels"),
            "height": c.declare("height", T.INT, c.literal(source, "height"), "pixels")}), {
            "num_images": c.declare("num_images", T.INT, c.literal(source, "batch_size"),
                                    "EmptyLatentImage's batch_size")}
    if source.class_type not in ("VAEEncode", "VAEEncodeForInpaint"):
        raise InvalidArgument(f"{sampler.label}: its latent comes from {source.label}; the "
                              "fleet starts from EmptyLatentImage, VAEEncode or "
                              "VAEEncodeForInpaint", field=sampler.where("latent_image"))
    _checkpoint(c, c.source(source, "vae"), model)
    pixels = c.source(source, "pixels")
    if pixels.class_type != "LoadImage":
        raise InvalidArgument(f"{source.label}: the image must come from LoadImage",
                              field=source.where("pixels"))
    inputs: dict[str, Any] = {"image": c.declare("image", T.IMAGE, None, f"{pixels.label}: "
                                                 f"{c.literal(pixels, 'image')}")}
    mode = "image"
    if source.class_type == "VAEEncodeForInpaint":
        mode = "inpaint"
        if c.literal(source, "grow_mask_by"):
            raise InvalidArgument(f"{source.label}: grow_mask_by must be 0; the fleet inpaints "
                                  "the mask as given", field=source.where("grow_mask_by"))
        mask = c.source(source, "mask")
        inputs["mask"] = c.declare("mask", T.MASK, None, f"{mask.label}: white = repaint")
        c.notes.append(f"{mask.label}: the mask is an input of its own (white = repaint), "
                       "not the image's alpha channel")
    strength = c.declare("strength", T.FLOAT, denoise, "KSampler's denoise")
    return Node("encode", Operator.VAE_ENCODE, model, mode, inputs), {"strength": strength}


def _sampling(c: Conversion, sampler: ComfyNode) -> dict[str, Any]:
    key = (c.literal(sampler, "sampler_name"), c.literal(sampler, "scheduler"))
    if key not in SAMPLERS:
        served = ", ".join(f"{s}/{k}" for s, k in SAMPLERS)
        raise InvalidArgument(f"{sampler.label}: sampler {key[0]!r} with scheduler {key[1]!r} is "
                              f"not served; the fleet serves {served}",
                              field=sampler.where("sampler_name"))
    return {"seed": c.declare("seed", T.INT, c.literal(sampler, "seed"), "KSampler's seed"),
            "steps": c.declare("steps", T.INT, c.literal(sampler, "steps"), "KSampler's steps"),
            "guidance_scale": c.declare("guidance_scale", T.FLOAT,
                                        float(c.literal(sampler, "cfg")), "KSampler's cfg"),
            "scheduler": Const(SAMPLERS[key])}


def _outputs(c: Conversion, sampler: ComfyNode, model: str, graph: list[Node]
             ) -> list[OutputDecl]:
    outputs: list[OutputDecl] = []
    for node in c.nodes.values():
        if node.class_type not in ("SaveImage", "PreviewImage"):
            continue
        decode = c.source(node, "images")
        if decode.class_type != "VAEDecode" or c.source(decode, "samples") is not sampler:
            raise InvalidArgument(f"{node.label}: its images must be the sampler's, through "
                                  "VAEDecode", field=node.where("images"))
        _checkpoint(c, c.source(decode, "vae"), model)
        if "filename_prefix" in node.inputs:
            c.notes.append(f"{node.label}: filename_prefix is the client's to use; the images "
                           "come back in the result")
        outputs.append(OutputDecl("image" if not outputs else f"image_{node.id}",
                                  FromNode("decode", "image")))
    graph.append(Node("decode", Operator.VAE_DECODE, model,
                      inputs={"latents": FromNode("denoise", "latents")}))
    return outputs
