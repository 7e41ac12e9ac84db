"""A Generate request that names a registered workflow, checked against it and bound: its
inputs (each named ``inputs.NAME`` in errors), the denoise node's parameters as the request's
:class:`~services.gateway.generation.Generation` (checked as a plain request's are), the
denoise node's adapters and patches as the attachments a plain request would have (validated
by the same attachment kinds), and the :class:`~.plan.Plan` of the other nodes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from diffusion.v1 import gateway_pb2
from services.common.errors import FleetError, InvalidArgument
from services.common.families import PromptInput
from services.common.model_store import ModelStore
from services.gateway import images
from services.gateway import validation_rules as rules
from services.gateway.attachments import AttachmentKinds
from services.gateway.generation import Generation
from services.gateway.settings import GatewaySettings
from services.gateway.workflows import catalog
from services.gateway.workflows.plan import Plan, PreparedImage
from services.gateway.workflows.registry import Registered
from services.gateway.workflows.spec import Const, FromInput, FromNode, Node, Operator, Workflow

# What a workflow declares itself: a request naming a workflow gives them as its inputs.
PLAIN_FIELDS = ("model", "prompt", "negative_prompt", "width", "height", "num_inference_steps",
                "has_guidance_scale", "seed", "controlnets", "loras", "image", "mask", "strength",
                "template_id", "scheduler", "num_images", "ip_adapters")


@dataclass(frozen=True)
class Bound:
    value: Any                # str, int, float, or (bytes, PIL image) for images
    field: str                # where it came from, for errors


class Values:
    """The value of every node input of one run, and where each came from."""

    def __init__(self, workflow: Workflow, inputs: dict[str, Bound]) -> None:
        self.workflow = workflow
        self.inputs = inputs

    def get(self, node: Node, port: str) -> Bound | None:
        binding = node.inputs.get(port)
        if binding is None:
            default = catalog.OPERATORS[node.operator].port(port)
            return Bound(default.default, self.where(node, port)) if default else None
        return self.resolve(binding, self.where(node, port))

    def resolve(self, binding: Any, field: str) -> Bound | None:
        if isinstance(binding, FromInput):
            return self.inputs[binding.name]
        if isinstance(binding, Const):
            return Bound(binding.value, field)
        return None

    def where(self, node: Node, port: str) -> str:
        binding = node.inputs.get(port)
        if isinstance(binding, FromInput):
            return f"inputs.{binding.name}"
        return f"workflow.nodes.{node.id}.inputs.{port}"

    def number(self, node: Node, port: str) -> tuple[Any, str]:
        bound = self.get(node, port)
        return (None if bound is None else bound.value), self.where(node, port)


def input_value(decl: Any, given: Any, limits: GatewaySettings) -> Bound:
    field = f"inputs.{decl.name}"
    const = Const(given) if given is not None else decl.default
    if const is None:
        raise InvalidArgument(f"workflow input {decl.name!r} ({decl.type}) is required",
                              field=field)
    if not catalog.accepts(decl.type, const.type):
        raise InvalidArgument(f"input {decl.name!r} takes {decl.type}, not {const.type}",
                              field=field)
    value = const.value
    if decl.type == catalog.T.FLOAT:
        value = float(value)
        if not math.isfinite(value):
            raise InvalidArgument(f"{value} is not a finite number", field=field)
    if decl.type == catalog.T.TEXT and len(value) > limits.max_prompt_chars:
        raise InvalidArgument(f"longer than {limits.max_prompt_chars} characters", field=field)
    if decl.type in (catalog.T.IMAGE, catalog.T.MASK):
        value = (value, images.decode(value, field, limits.max_image_bytes))
    return Bound(value, field)


def bind_inputs(req: gateway_pb2.GenerateRequest, workflow: Workflow,
                limits: GatewaySettings) -> dict[str, Bound]:
    for name in PLAIN_FIELDS:
        if name in ("controlnets", "loras", "ip_adapters"):
            given = len(getattr(req, name)) > 0
        elif name in ("image", "mask"):
            given = req.HasField(name)
        else:
            given = bool(getattr(req, name))
        if given:
            raise InvalidArgument(f"workflow {workflow.name!r} declares its own {name}: give "
                                  "the workflow's inputs (GetWorkflow lists them)", field=name)
    declared = {d.name for d in workflow.inputs}
    for name in req.inputs:
        if name not in declared:
            raise InvalidArgument(f"workflow {workflow.name!r} has no input {name!r}; it has "
                                  f"{', '.join(sorted(declared)) or 'none'}",
                                  field=f"inputs.{name}")
    found = {}
    for decl in workflow.inputs:
        given = None
        if decl.name in req.inputs:
            const_value = req.inputs[decl.name]
            kind = const_value.WhichOneof("kind")
            given = getattr(const_value, kind) if kind else None
        found[decl.name] = input_value(decl, given, limits)
    return found


def bind(req: gateway_pb2.GenerateRequest, registered: Registered, store: ModelStore,
         limits: GatewaySettings, attachments: AttachmentKinds, request_id: str) -> Generation:
    workflow = registered.workflow
    values = Values(workflow, bind_inputs(req, workflow, limits))
    denoise = workflow.denoise_node()
    gen = _generation(values, denoise, store, limits, request_id, req)
    plan = Plan(registered)
    for node in workflow.nodes:
        if node.operator == Operator.TEXT_ENCODE:
            text = values.get(node, "text")
            assert text is not None
            if len(text.value) > limits.max_prompt_chars:
                raise InvalidArgument(f"longer than {limits.max_prompt_chars} characters",
                                      field=text.field)
            plan.texts[node.id] = PromptInput(text.value, node.mode == "negative"
                                              and _zeros_empty(store, node.model, text.value))
        elif node.operator == Operator.AR_EMBED:
            prompt = values.get(node, "prompt")
            assert prompt is not None
            plan.prompts[node.id] = prompt.value
    latent = _latent_node(workflow, denoise)
    if latent.operator == Operator.VAE_ENCODE:
        plan.images[latent.id] = PreparedImage(gen.init_image, gen.masked_image, gen.mask)
    plan.skipped = _skipped(workflow, denoise, gen, values)
    gen.plan = plan
    gen.attachments = _attachments(values, denoise, gen, store, limits, attachments, req)
    return gen


def _zeros_empty(store: ModelStore, model: str, text: str) -> bool:
    """An empty negative prompt is all zeros where the family's pipelines make it so."""
    return (not text and store.family(model).zero_empty_negative
            and bool(store.pipeline_config(model).get("force_zeros_for_empty_prompt", False)))


def _latent_node(workflow: Workflow, denoise: Node) -> Node:
    latent = denoise.inputs["latent"]
    assert isinstance(latent, FromNode)
    return workflow.node(latent.node)


def _generation(values: Values, denoise: Node, store: ModelStore, limits: GatewaySettings,
                request_id: str, req: gateway_pb2.GenerateRequest) -> Generation:
    model = denoise.model
    entry = store.get(model, catalog.PIPELINES, field=f"workflow.nodes.{denoise.id}.model")
    family, vsf = store.family(model), store.vae_scale_factor(model)
    factor = family.size_factor(vsf)
    latent = _latent_node(values.workflow, denoise)
    picture = mask = None
    if latent.operator == Operator.VAE_ENCODE:
        picture = values.get(latent, "image").value[1]  # type: ignore[union-attr]
        if latent.mode == "inpaint":
            mask = values.get(latent, "mask")
    default_w, default_h = rules.default_sides(entry.default_size, picture, vsf, factor)
    width = rules.side(values.get(latent, "width").value, default_w,  # type: ignore[union-attr]
                       values.where(latent, "width"), limits, factor, family.name)
    height = rules.side(values.get(latent, "height").value, default_h,  # type: ignore[union-attr]
                        values.where(latent, "height"), limits, factor, family.name)
    steps, at = values.number(denoise, "steps")
    steps = rules.steps(steps, limits, at)
    guidance, at = values.number(denoise, "guidance_scale")
    guidance = rules.guidance(guidance, family, limits, at)
    strength, at = values.number(denoise, "strength")
    if strength and picture is None:
        raise InvalidArgument("strength needs a latent from an image (vae_encode)", field=at)
    strength = rules.strength(strength, family, mask is not None, at)
    num_images, at = values.number(denoise, "num_images")
    num_images = rules.image_count(num_images, at)
    seed, at = values.number(denoise, "seed")
    if not 0 <= seed < 2 ** 64:
        raise InvalidArgument(f"{seed} is not a seed (0 .. 2^64-1)", field=at)
    scheduler, at = values.number(denoise, "scheduler")
    gen = Generation(
        request_id=request_id, model=model, prompt="", negative_prompt="", width=width,
        height=height, steps=steps, guidance_scale=guidance, seed=seed, vae_scale_factor=vsf,
        family=family.name, classifier_free=family.classifier_free_guidance, strength=strength,
        scheduler=family.check_scheduler(scheduler, at),
        num_images=num_images, return_pixels=req.return_pixels, priority=req.priority)
    if picture is not None:
        images.attach(gen, picture, mask.value[1] if mask is not None else None,
                      mask.field if mask is not None else "", family.inpaints_on_base)
    return gen


def _skipped(workflow: Workflow, denoise: Node, gen: Generation, values: Values) -> frozenset[str]:
    negative = denoise.inputs.get("negative")
    if gen.do_cfg and negative is None:
        raise InvalidArgument("guidance_scale > 1 needs a negative prompt: bind the denoise "
                              "node's 'negative' input", field=values.where(denoise,
                                                                            "guidance_scale"))
    if gen.do_cfg or not isinstance(negative, FromNode):
        return frozenset()
    text = values.get(workflow.node(negative.node), "text")
    if not gen.classifier_free and text is not None and text.value:  # not dropped silently
        raise InvalidArgument(f"{gen.family} models run without classifier-free guidance "
                              "(their guidance is distilled): leave the negative prompt empty",
                              field=text.field)
    return frozenset({negative.node})


def _attachments(values: Values, denoise: Node, gen: Generation, store: ModelStore,
                 limits: GatewaySettings, kinds: AttachmentKinds,
                 req: gateway_pb2.GenerateRequest) -> list[Any]:
    """The denoise node's adapters and patches as a plain request's fields, validated by the
    attachment kinds; their errors are renamed to the workflow's fields."""
    asked = gateway_pb2.GenerateRequest(request_id=gen.request_id, preview=req.preview,
                                        approximations=req.approximations)
    renamed: dict[str, str] = {}
    node_at = f"workflow.nodes.{denoise.id}"
    for i, c in enumerate(denoise.controlnets):
        if c.scale == 0:
            continue   # adds nothing
        image = values.resolve(c.image, f"{node_at}.controlnets[{i}].image")
        assert image is not None
        j = len(asked.controlnets)
        asked.controlnets.add(name=c.name, image=gateway_pb2.ImageInput(data=image.value[0]),
                              scale=c.scale, guidance_start=c.guidance_start,
                              guidance_end=c.guidance_end)
        renamed[f"controlnets[{j}].image"] = image.field
        renamed[f"controlnets[{j}]"] = f"{node_at}.controlnets[{i}]"
    for i, a in enumerate(denoise.ip_adapters):
        assert isinstance(a.image_embeds, FromNode)
        encoder = values.workflow.node(a.image_embeds.node)
        image = values.get(encoder, "image")
        assert image is not None
        asked.ip_adapters.add(name=a.name, image=gateway_pb2.ImageInput(data=image.value[0]),
                              scale=a.scale)
        renamed[f"ip_adapters[{i}].image"] = image.field
        renamed[f"ip_adapters[{i}]"] = f"{node_at}.ip_adapters[{i}]"
    for i, lo in enumerate(denoise.loras):
        renamed[f"loras[{i}]"] = f"{node_at}.loras[{i}]"
        asked.loras.add(name=lo.name, scale=lo.scale, text_encoder_scale=lo.encoder_scale)
    renamed.update({"controlnets": f"{node_at}.controlnets", "loras": f"{node_at}.loras",
                    "ip_adapters": f"{node_at}.ip_adapters"})
    try:
        return kinds.validate(asked, gen, store, limits)
    except FleetError as exc:
        prefix = max((p for p in renamed if exc.field.startswith(p)), key=len, default=None)
        if prefix is None:
            raise
        raise type(exc)(exc.message, field=renamed[prefix] + exc.field[len(prefix):]) from exc
