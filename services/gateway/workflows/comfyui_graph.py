"""A ComfyUI API-format file read as data and checked as a graph.

The API format ("Export (API)") is ``{node_id: {"class_type": str, "inputs": {name: literal
| [source_node_id, output_index]}}}``. The file is parsed as JSON and nothing else: no class
is looked up by name in any code, no value is evaluated. This module knows the classes the
fleet converts (their inputs and outputs, typed) and refuses, naming the node id and class:
the UI's "Save" format, unknown or custom classes, regional or combined conditioning,
model-patch nodes, file or URL loaders, links to missing nodes or outputs, type mismatches
(links and literals), cycles and graphs without an output node.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidArgument

FIELD = "content"


@dataclass(frozen=True)
class ClassSpec:
    inputs: dict[str, str]              # name -> type (MODEL, CLIP, ..., INT, FLOAT, STRING)
    outputs: tuple[str, ...]
    optional: frozenset[str] = frozenset()


CLASSES: dict[str, ClassSpec] = {
    "CheckpointLoaderSimple": ClassSpec({"ckpt_name": "STRING"}, ("MODEL", "CLIP", "VAE")),
    "CLIPTextEncode": ClassSpec({"text": "STRING", "clip": "CLIP"}, ("CONDITIONING",)),
    "EmptyLatentImage": ClassSpec({"width": "INT", "height": "INT", "batch_size": "INT"},
                                  ("LATENT",)),
    "KSampler": ClassSpec({"model": "MODEL", "seed": "INT", "steps": "INT", "cfg": "FLOAT",
                           "sampler_name": "STRING", "scheduler": "STRING",
                           "positive": "CONDITIONING", "negative": "CONDITIONING",
                           "latent_image": "LATENT", "denoise": "FLOAT"}, ("LATENT",)),
    "VAEEncode": ClassSpec({"pixels": "IMAGE", "vae": "VAE"}, ("LATENT",)),
    "VAEDecode": ClassSpec({"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "VAEEncodeForInpaint": ClassSpec({"pixels": "IMAGE", "vae": "VAE", "mask": "MASK",
                                      "grow_mask_by": "INT"}, ("LATENT",)),
    "LoadImage": ClassSpec({"image": "STRING", "upload": "STRING"}, ("IMAGE", "MASK"),
                           frozenset({"upload"})),
    "SaveImage": ClassSpec({"images": "IMAGE", "filename_prefix": "STRING"}, (),
                           frozenset({"filename_prefix"})),
    "PreviewImage": ClassSpec({"images": "IMAGE"}, ()),
    "LoraLoader": ClassSpec({"model": "MODEL", "clip": "CLIP", "lora_name": "STRING",
                             "strength_model": "FLOAT", "strength_clip": "FLOAT"},
                            ("MODEL", "CLIP")),
    "ControlNetLoader": ClassSpec({"control_net_name": "STRING"}, ("CONTROL_NET",)),
    "ControlNetApply": ClassSpec({"conditioning": "CONDITIONING", "control_net": "CONTROL_NET",
                                  "image": "IMAGE", "strength": "FLOAT"}, ("CONDITIONING",)),
    "ControlNetApplyAdvanced": ClassSpec(
        {"positive": "CONDITIONING", "negative": "CONDITIONING", "control_net": "CONTROL_NET",
         "image": "IMAGE", "strength": "FLOAT", "start_percent": "FLOAT",
         "end_percent": "FLOAT", "vae": "VAE"}, ("CONDITIONING", "CONDITIONING"),
        frozenset({"vae"})),
}
OUTPUT_CLASSES = frozenset({"SaveImage", "PreviewImage"})
LITERAL_TYPES = {"INT": (int,), "FLOAT": (int, float), "STRING": (str,)}

REGIONAL = frozenset({
    "ConditioningCombine", "ConditioningConcat", "ConditioningAverage", "ConditioningSetArea",
    "ConditioningSetAreaPercentage", "ConditioningSetAreaStrength", "ConditioningSetMask",
    "ConditioningSetTimestepRange", "ConditioningZeroOut", "GLIGENTextBoxApply"})
MODEL_PATCHES = frozenset({
    "FreeU", "FreeU_V2", "ModelSamplingDiscrete", "ModelSamplingContinuousEDM",
    "ModelSamplingFlux", "ModelSamplingSD3", "RescaleCFG", "PerturbedAttentionGuidance",
    "SelfAttentionGuidance", "TomePatchModel", "PatchModelAddDownscale", "CLIPSetLastLayer",
    "ModelMergeSimple", "ModelMergeBlocks", "CLIPMergeSimple", "HypernetworkLoader",
    "LoraLoaderModelOnly", "UpscaleModelLoader", "StyleModelApply", "unCLIPConditioning"})


@dataclass(frozen=True)
class Link:
    node: str
    output: int


@dataclass(frozen=True)
class ComfyNode:
    id: str
    class_type: str
    inputs: dict[str, Any]      # literals, and Link for links

    def where(self, name: str = "") -> str:
        return f"{FIELD}.{self.id}.inputs.{name}" if name else f"{FIELD}.{self.id}"

    @property
    def label(self) -> str:
        return f"node {self.id} ({self.class_type})"


def _refusal(node_id: str, class_type: str) -> str:
    if class_type in REGIONAL:
        return ("regional or combined conditioning is not served: the fleet's denoise node "
                "takes one prompt and one negative prompt")
    if class_type in MODEL_PATCHES:
        return "model-patch nodes are not served: the fleet runs its models as they are stored"
    if "Load" in class_type:
        return ("file or URL loaders are not served: the fleet's models are named by "
                "CheckpointLoaderSimple, LoraLoader and ControlNetLoader, images are inputs "
                "(LoadImage)")
    return "unknown or custom class type; the fleet converts " + ", ".join(sorted(CLASSES))


def read(content: str) -> dict[str, ComfyNode]:
    """The file's nodes, each of a class the fleet converts with well-formed inputs."""
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"not JSON: {exc}", field=FIELD) from None
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data:
        raise InvalidArgument("this is ComfyUI's UI format (Save); the fleet reads the API "
                              "format: save the workflow with Export (API)", field=FIELD)
    if not isinstance(data, dict) or not data:
        raise InvalidArgument("an API-format workflow is an object of nodes by id", field=FIELD)
    nodes = {}
    for node_id, raw in data.items():
        if not isinstance(raw, dict) or not isinstance(raw.get("class_type"), str) \
                or not isinstance(raw.get("inputs", {}), dict):
            raise InvalidArgument(f"node {node_id} is not {{class_type, inputs}}; is this the "
                                  "API format (Export (API))?", field=f"{FIELD}.{node_id}")
        class_type = raw["class_type"]
        if class_type not in CLASSES:
            raise InvalidArgument(f"node {node_id} ({class_type}): "
                                  f"{_refusal(node_id, class_type)}",
                                  field=f"{FIELD}.{node_id}.class_type")
        nodes[node_id] = ComfyNode(node_id, class_type, _inputs(node_id, class_type,
                                                                raw.get("inputs", {})))
    _check_links(nodes)
    _check_acyclic(nodes)
    if not any(n.class_type in OUTPUT_CLASSES for n in nodes.values()):
        raise InvalidArgument("the workflow has no output node (SaveImage or PreviewImage)",
                              field=FIELD)
    return nodes


def _inputs(node_id: str, class_type: str, raw: dict[str, Any]) -> dict[str, Any]:
    spec = CLASSES[class_type]
    label = f"node {node_id} ({class_type})"
    found: dict[str, Any] = {}
    for name, value in raw.items():
        where = f"{FIELD}.{node_id}.inputs.{name}"
        if name not in spec.inputs:
            raise InvalidArgument(f"{label} has no input {name!r} the fleet knows; it takes "
                                  f"{', '.join(spec.inputs)}", field=where)
        if isinstance(value, list):
            if len(value) != 2 or not isinstance(value[0], str | int) \
                    or not isinstance(value[1], int) or isinstance(value[1], bool):
                raise InvalidArgument(f"{label}: input {name!r} is neither a literal nor a "
                                      "link [node_id, output_index]", field=where)
            found[name] = Link(str(value[0]), value[1])
            continue
        kind = spec.inputs[name]
        if kind not in LITERAL_TYPES or isinstance(value, bool) \
                or not isinstance(value, LITERAL_TYPES[kind]):
            raise InvalidArgument(f"{label}: input {name!r} takes {kind}, the file gives "
                                  f"{type(value).__name__} {value!r}", field=where)
        if isinstance(value, str) and "://" in value:
            raise InvalidArgument(f"{label}: input {name!r} is a URL; file or URL loaders are "
                                  "not served", field=where)
        found[name] = value
    for name in spec.inputs:
        if name not in found and name not in spec.optional:
            raise InvalidArgument(f"{label} lacks its input {name!r}",
                                  field=f"{FIELD}.{node_id}.inputs.{name}")
    return found


def _check_links(nodes: dict[str, ComfyNode]) -> None:
    for node in nodes.values():
        spec = CLASSES[node.class_type]
        for name, value in node.inputs.items():
            if not isinstance(value, Link):
                continue
            source = nodes.get(value.node)
            if source is None:
                raise InvalidArgument(f"{node.label}: input {name!r} links to node "
                                      f"{value.node}, which is not in the file",
                                      field=node.where(name))
            outputs = CLASSES[source.class_type].outputs
            if not 0 <= value.output < len(outputs):
                raise InvalidArgument(f"{node.label}: input {name!r} links to output "
                                      f"{value.output} of {source.label}, which has "
                                      f"{len(outputs)} outputs", field=node.where(name))
            if outputs[value.output] != spec.inputs[name]:
                raise InvalidArgument(f"{node.label}: input {name!r} takes "
                                      f"{spec.inputs[name]}, but is linked to the "
                                      f"{outputs[value.output]} output of {source.label}",
                                      field=node.where(name))


def _check_acyclic(nodes: dict[str, ComfyNode]) -> None:
    state: dict[str, int] = {}        # 1: on the current path, 2: done

    def visit(node_id: str) -> None:
        state[node_id] = 1
        for value in nodes[node_id].inputs.values():
            if isinstance(value, Link):
                if state.get(value.node) == 1:
                    node = nodes[value.node]
                    raise InvalidArgument(f"{node.label} is on a cycle: it depends on itself",
                                          field=node.where())
                if value.node not in state:
                    visit(value.node)
        state[node_id] = 2

    for node_id in nodes:
        if node_id not in state:
            visit(node_id)
