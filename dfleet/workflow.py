"""Workflow graphs from Python, JSON or YAML: what ``Client.register_workflow`` sends.

    wf = dfleet.Workflow("sketch")
    prompt = wf.input("prompt", "text")
    edges = wf.input("edges", "image")
    positive = wf.text_encode("tiny-sd", prompt)
    negative = wf.text_encode("tiny-sd", "", mode="negative")
    latents = wf.denoise("tiny-sd", positive, negative, wf.latent_init(64, 64), steps=20,
                         controlnets=[dfleet.WorkflowControlNet("tiny-cn-a", edges, 0.8)])
    wf.output("image", wf.vae_decode("tiny-sd", latents))
    workflow_id = client.register_workflow(wf)
    client.generate(workflow=workflow_id,
                    inputs={"prompt": "a house", "edges": Path("edges.png")})

Files hold the ``WorkflowSpec`` message in the proto's JSON form (field names as in
``workflow.proto``); operators and types may be written short (``text_encode``, ``image``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from dfleet.inputs import ImageLike, encode_image
from diffusion.v1 import workflow_pb2

OPERATORS = ("text_encode", "image_encode", "vae_encode", "vae_decode", "latent_init",
             "denoise", "ar_embed", "embed_adapter")
TYPES = ("text", "int", "float", "image", "mask", "conditioning", "latent", "denoised",
         "embeddings", "image_embeds")


@dataclass(frozen=True)
class Input:
    """A workflow input, as a node's input."""

    name: str


@dataclass(frozen=True)
class Output:
    """A node's output, as another node's input (or a workflow output)."""

    node: str
    output: str


Source = Input | Output | str | int | float | bytes | ImageLike


@dataclass(frozen=True)
class WorkflowControlNet:
    name: str
    image: Source
    scale: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0


@dataclass(frozen=True)
class WorkflowIpAdapter:
    name: str
    image_embeds: Output        # an image_encode node's output
    scale: float = 1.0


@dataclass(frozen=True)
class WorkflowLora:
    """``scale`` on the denoiser, ``text_encoder_scale`` on the text encoders (None: the
    same); ComfyUI's strength_model and strength_clip."""

    name: str
    scale: float = 1.0
    text_encoder_scale: float | None = None


def literal(value: Any) -> workflow_pb2.WorkflowValue:
    """A str is text; an image is a PIL image, a numpy array, encoded bytes or a path given as
    a ``pathlib.Path`` (never a str, which would be ambiguous)."""
    if isinstance(value, bool):
        raise TypeError("a workflow value is text, a number or an image, not a bool")
    if isinstance(value, int):
        return workflow_pb2.WorkflowValue(integer=value)
    if isinstance(value, float):
        return workflow_pb2.WorkflowValue(number=value)
    if isinstance(value, str):
        return workflow_pb2.WorkflowValue(text=value)
    return workflow_pb2.WorkflowValue(image=encode_image(value))


def binding(source: Source) -> workflow_pb2.WorkflowBinding:
    if isinstance(source, Input):
        return workflow_pb2.WorkflowBinding(input=source.name)
    if isinstance(source, Output):
        return workflow_pb2.WorkflowBinding(
            node=workflow_pb2.NodeOutputRef(node=source.node, output=source.output))
    return workflow_pb2.WorkflowBinding(literal=literal(source))


class Workflow:
    """Builds a ``WorkflowSpec``; each operator method adds a node and returns its output."""

    def __init__(self, name: str, description: str = "") -> None:
        self.message = workflow_pb2.WorkflowSpec(name=name, description=description)

    def input(self, name: str, type: str, default: Any = None,
              description: str = "") -> Input:
        if type not in TYPES:
            raise ValueError(f"type {type!r} is not one of {', '.join(TYPES)}")
        decl = self.message.inputs.add(name=name, type=_enum("VALUE_TYPE", type),
                                       description=description)
        if default is not None:
            decl.default_value.CopyFrom(literal(default))
        return Input(name)

    def node(self, operator: str, model: str = "",
             inputs: Mapping[str, Source | None] | None = None,
             *, mode: str = "", id: str = "", output: str = "") -> Output:
        """A node of any operator; returns its output ``output`` (default: its first)."""
        if operator not in OPERATORS:
            raise ValueError(f"operator {operator!r} is not one of {', '.join(OPERATORS)}")
        node_id = id or f"{operator}_{len(self.message.nodes)}"
        node = self.message.nodes.add(id=node_id, operator=_enum("OPERATOR", operator),
                                      model=model, mode=mode)
        for name, source in (inputs or {}).items():
            if source is not None:
                node.inputs[name].CopyFrom(binding(source))
        return Output(node_id, output or _FIRST_OUTPUT[operator])

    def text_encode(self, model: str, text: Source, mode: str = "prompt", id: str = "") -> Output:
        return self.node("text_encode", model, {"text": text}, mode=mode, id=id)

    def image_encode(self, ip_adapter: str, image: Source, id: str = "") -> Output:
        return self.node("image_encode", ip_adapter, {"image": image}, id=id)

    def latent_init(self, width: Source = 0, height: Source = 0, id: str = "") -> Output:
        return self.node("latent_init", "", {"width": width, "height": height}, id=id)

    def vae_encode(self, model: str, image: Source, mask: Source | None = None,
                   width: Source = 0, height: Source = 0, id: str = "") -> Output:
        return self.node("vae_encode", model, {"image": image, "mask": mask, "width": width,
                                               "height": height},
                         mode="inpaint" if mask is not None else "image", id=id)

    def vae_decode(self, model: str, latents: Output, id: str = "") -> Output:
        return self.node("vae_decode", model, {"latents": latents}, id=id)

    def ar_embed(self, model: str, prompt: Source, id: str = "") -> Output:
        return self.node("ar_embed", model, {"prompt": prompt}, id=id)

    def embed_adapter(self, adapter: str, embeddings: Output, pooled: Output | None = None,
                      id: str = "") -> Output:
        return self.node("embed_adapter", adapter, {"embeddings": embeddings, "pooled": pooled},
                         id=id)

    def denoise(self, model: str, positive: Output, negative: Output | None, latent: Output, *,
                seed: Source | None = None, steps: Source | None = None,
                guidance_scale: Source | None = None, strength: Source | None = None,
                scheduler: Source | None = None, num_images: Source | None = None,
                controlnets: list[WorkflowControlNet] = (),   # type: ignore[assignment]
                ip_adapters: list[WorkflowIpAdapter] = (),    # type: ignore[assignment]
                loras: list[WorkflowLora] = (),               # type: ignore[assignment]
                id: str = "") -> Output:
        out = self.node("denoise", model, {
            "positive": positive, "negative": negative, "latent": latent, "seed": seed,
            "steps": steps, "guidance_scale": guidance_scale, "strength": strength,
            "scheduler": scheduler, "num_images": num_images}, id=id)
        node = self.message.nodes[-1]
        for c in controlnets:
            node.controlnets.add(name=c.name, image=binding(c.image), scale=c.scale,
                                 guidance_start=c.guidance_start, guidance_end=c.guidance_end)
        for a in ip_adapters:
            node.ip_adapters.add(name=a.name, image_embeds=binding(a.image_embeds),
                                 scale=a.scale)
        for lo in loras:
            lora = node.loras.add(name=lo.name, scale=lo.scale)
            if lo.text_encoder_scale is not None:
                lora.text_encoder_scale = lo.text_encoder_scale
        return out

    def output(self, name: str, source: Output) -> None:
        self.message.outputs.add(name=name, source=workflow_pb2.NodeOutputRef(
            node=source.node, output=source.output))

    def spec(self) -> workflow_pb2.WorkflowSpec:
        spec = workflow_pb2.WorkflowSpec()
        spec.CopyFrom(self.message)
        return spec

    def to_json(self) -> str:
        return spec_to_json(self.message)


_FIRST_OUTPUT = {"text_encode": "conditioning", "image_encode": "image_embeds",
                 "vae_encode": "latent", "vae_decode": "image", "latent_init": "latent",
                 "denoise": "latents", "ar_embed": "embeddings", "embed_adapter": "conditioning"}


def _enum(prefix: str, short: str) -> int:
    enum = workflow_pb2.ValueType if prefix == "VALUE_TYPE" else workflow_pb2.Operator
    return int(enum.Value(f"{prefix}_{short.upper()}"))


_PREFIXES = {"type": "VALUE_TYPE_", "operator": "OPERATOR_"}


def _shorten(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: (v.removeprefix(_PREFIXES[k]).lower() if k in _PREFIXES
                    and isinstance(v, str) else _shorten(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [_shorten(v) for v in data]
    return data


def _lengthen(data: Any) -> Any:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if key == "type" and isinstance(value, str) and value.lower() in TYPES:
                value = f"VALUE_TYPE_{value.upper()}"
            elif key == "operator" and isinstance(value, str) and value.lower() in OPERATORS:
                value = f"OPERATOR_{value.upper()}"
            out[key] = _lengthen(value)
        return out
    if isinstance(data, list):
        return [_lengthen(v) for v in data]
    return data


def spec_to_json(spec: workflow_pb2.WorkflowSpec) -> str:
    data = json_format.MessageToDict(spec, preserving_proto_field_name=True)
    return json.dumps(_shorten(data), indent=2)


def spec_from_data(data: Mapping[str, Any]) -> workflow_pb2.WorkflowSpec:
    """A ``WorkflowSpec`` from its JSON form (as :func:`spec_to_json` writes it); ValueError
    naming what is wrong."""
    spec = workflow_pb2.WorkflowSpec()
    try:
        json_format.ParseDict(_lengthen(dict(data)), spec)
    except json_format.ParseError as exc:
        raise ValueError(f"not a workflow spec: {exc}") from None
    return spec


def load_spec(path: str | os.PathLike[str]) -> workflow_pb2.WorkflowSpec:
    """A workflow file: ``.json``, or ``.yaml``/``.yml`` (needs PyYAML)."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ValueError("reading YAML needs PyYAML (pip install pyyaml)") from None
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a workflow file holds one object")
    return spec_from_data(data)
