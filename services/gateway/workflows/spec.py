"""A workflow as domain types, converted once from and to its proto (``WorkflowSpec``).

A workflow has typed inputs, nodes (an operator of :mod:`.catalog` with its model, mode and
inputs, each bound to a literal, a workflow input or another node's output; a denoise node
also has ControlNets, IP-Adapters and LoRAs) and outputs (node outputs by name). The content
id is a hash of the spec's canonical JSON: the same spec always gets the same id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

from google.protobuf import json_format

from diffusion.v1 import workflow_pb2


class ValueType(StrEnum):
    TEXT = "text"
    INT = "int"
    FLOAT = "float"
    IMAGE = "image"
    MASK = "mask"
    CONDITIONING = "conditioning"
    LATENT = "latent"
    DENOISED = "denoised"
    EMBEDDINGS = "embeddings"
    IMAGE_EMBEDS = "image_embeds"


class Operator(StrEnum):
    TEXT_ENCODE = "text_encode"
    IMAGE_ENCODE = "image_encode"
    VAE_ENCODE = "vae_encode"
    VAE_DECODE = "vae_decode"
    LATENT_INIT = "latent_init"
    DENOISE = "denoise"
    AR_EMBED = "ar_embed"
    EMBED_ADAPTER = "embed_adapter"


Literal = str | int | float | bytes


@dataclass(frozen=True)
class Const:
    value: Literal

    @property
    def type(self) -> ValueType:
        if isinstance(self.value, bytes):
            return ValueType.IMAGE
        if isinstance(self.value, bool) or isinstance(self.value, int):
            return ValueType.INT
        return ValueType.FLOAT if isinstance(self.value, float) else ValueType.TEXT


@dataclass(frozen=True)
class FromInput:
    name: str


@dataclass(frozen=True)
class FromNode:
    node: str
    output: str


Binding = Const | FromInput | FromNode


@dataclass(frozen=True)
class InputDecl:
    name: str
    type: ValueType
    default: Const | None = None     # None: required
    description: str = ""


@dataclass(frozen=True)
class ControlNetUse:
    name: str
    image: Binding
    scale: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0


@dataclass(frozen=True)
class IpAdapterUse:
    name: str
    image_embeds: Binding
    scale: float = 1.0


@dataclass(frozen=True)
class LoraUse:
    name: str
    scale: float = 1.0                  # on the denoiser (0: only on the text encoders)
    text_encoder_scale: float | None = None   # None: the same as scale

    @property
    def encoder_scale(self) -> float:
        return self.scale if self.text_encoder_scale is None else self.text_encoder_scale


@dataclass(frozen=True)
class Node:
    id: str
    operator: Operator
    model: str = ""
    mode: str = ""
    inputs: dict[str, Binding] = field(default_factory=dict, hash=False)
    controlnets: tuple[ControlNetUse, ...] = ()
    ip_adapters: tuple[IpAdapterUse, ...] = ()
    loras: tuple[LoraUse, ...] = ()

    def sources(self) -> list[tuple[str, Binding]]:
        """Every binding of the node with where it sits (``inputs.text``, ...)."""
        found: list[tuple[str, Binding]] = [(f"inputs.{k}", b) for k, b in self.inputs.items()]
        found += [(f"controlnets[{i}].image", c.image) for i, c in enumerate(self.controlnets)]
        found += [(f"ip_adapters[{i}].image_embeds", a.image_embeds)
                  for i, a in enumerate(self.ip_adapters)]
        return found

    def upstream(self) -> set[str]:
        return {b.node for _, b in self.sources() if isinstance(b, FromNode)}


@dataclass(frozen=True)
class OutputDecl:
    name: str
    source: FromNode


@dataclass(frozen=True)
class Workflow:
    name: str
    nodes: tuple[Node, ...]
    outputs: tuple[OutputDecl, ...]
    inputs: tuple[InputDecl, ...] = ()
    description: str = ""

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)

    def input(self, name: str) -> InputDecl:
        return next(i for i in self.inputs if i.name == name)

    def denoise_node(self) -> Node:
        return next(n for n in self.nodes if n.operator == Operator.DENOISE)


# proto <-> domain
_TYPES = {t: getattr(workflow_pb2, f"VALUE_TYPE_{t.name}") for t in ValueType}
_OPERATORS = {o: getattr(workflow_pb2, f"OPERATOR_{o.name}") for o in Operator}


def const_from_proto(value: workflow_pb2.WorkflowValue) -> Const | None:
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    literal: Literal = {"text": value.text, "integer": value.integer, "number": value.number,
                        "image": value.image}[kind]
    return Const(literal)


def const_to_proto(const: Const) -> workflow_pb2.WorkflowValue:
    v = const.value
    if isinstance(v, bytes):
        return workflow_pb2.WorkflowValue(image=v)
    if isinstance(v, int):
        return workflow_pb2.WorkflowValue(integer=v)
    if isinstance(v, float):
        return workflow_pb2.WorkflowValue(number=v)
    return workflow_pb2.WorkflowValue(text=v)


def binding_from_proto(message: workflow_pb2.WorkflowBinding) -> Binding | None:
    source = message.WhichOneof("source")
    if source == "literal":
        return const_from_proto(message.literal)
    if source == "input":
        return FromInput(message.input)
    if source == "node":
        return FromNode(message.node.node, message.node.output)
    return None


def binding_to_proto(binding: Binding) -> workflow_pb2.WorkflowBinding:
    if isinstance(binding, Const):
        return workflow_pb2.WorkflowBinding(literal=const_to_proto(binding))
    if isinstance(binding, FromInput):
        return workflow_pb2.WorkflowBinding(input=binding.name)
    return workflow_pb2.WorkflowBinding(
        node=workflow_pb2.NodeOutputRef(node=binding.node, output=binding.output))


def type_from_proto(value: int) -> ValueType | None:
    return next((t for t, v in _TYPES.items() if v == value), None)


def operator_from_proto(value: int) -> Operator | None:
    return next((o for o, v in _OPERATORS.items() if v == value), None)


def type_to_proto(value: ValueType) -> int:
    return int(_TYPES[value])


def to_proto(workflow: Workflow) -> workflow_pb2.WorkflowSpec:
    spec = workflow_pb2.WorkflowSpec(name=workflow.name, description=workflow.description)
    for decl in workflow.inputs:
        spec.inputs.append(workflow_pb2.WorkflowInput(
            name=decl.name, type=type_to_proto(decl.type), description=decl.description,
            default_value=const_to_proto(decl.default) if decl.default else None))
    for node in workflow.nodes:
        message = spec.nodes.add(id=node.id, operator=_OPERATORS[node.operator],
                                 model=node.model, mode=node.mode)
        for name, binding in node.inputs.items():
            message.inputs[name].CopyFrom(binding_to_proto(binding))
        for c in node.controlnets:
            message.controlnets.add(name=c.name, image=binding_to_proto(c.image), scale=c.scale,
                                    guidance_start=c.guidance_start,
                                    guidance_end=c.guidance_end)
        for a in node.ip_adapters:
            message.ip_adapters.add(name=a.name, image_embeds=binding_to_proto(a.image_embeds),
                                    scale=a.scale)
        for lo in node.loras:
            lora = message.loras.add(name=lo.name, scale=lo.scale)
            if lo.text_encoder_scale is not None:
                lora.text_encoder_scale = lo.text_encoder_scale
    for out in workflow.outputs:
        spec.outputs.add(name=out.name, source=workflow_pb2.NodeOutputRef(
            node=out.source.node, output=out.source.output))
    return spec


def content_id(spec: workflow_pb2.WorkflowSpec) -> str:
    """``wf-`` and 20 hex digits of the SHA-256 of the spec's canonical JSON."""
    canonical = json_format.MessageToJson(spec, sort_keys=True, indent=None,
                                          preserving_proto_field_name=True)
    return "wf-" + hashlib.sha256(canonical.encode()).hexdigest()[:20]
