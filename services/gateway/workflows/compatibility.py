"""Whether a workflow's models fit together, judged from the denoise node's model.

Text encoders must be of the denoise model's family with the same text width; VAEs of its
family with the same latent layout; the latent must suit the model (an inpainting model
takes vae_encode's inpaint latent and nothing else); ControlNets, IP-Adapters and LoRAs must
be served on the family and fit the model; an embedding adapter must take the width its AR
model predicts and give the denoise model's text width.
"""

from __future__ import annotations

from services.common.ar_models import adapter_widths, ar_width
from services.common.errors import InvalidArgument
from services.common.model_store import ModelStore
from services.gateway.attachments.ip_adapter import MAX_SCALE as MAX_IP_SCALE
from services.gateway.attachments.lora import check_fit
from services.gateway.validation_rules import in_range
from services.gateway.workflows.spec import FromNode, Node, Operator, Workflow


def prompt_width(store: ModelStore, model: str) -> int:
    """The width of the prompt embeddings ``model``'s denoiser attends to."""
    config = store.denoiser_config(model)
    dim = config.get("cross_attention_dim") or config.get("joint_attention_dim") or 0
    return int(dim if isinstance(dim, int) else dim[0])


def _vae_layout(store: ModelStore, model: str) -> tuple[object, ...]:
    config = store.vae_config(model)
    return (config.get("latent_channels"), config.get("scaling_factor"),
            config.get("shift_factor"), store.vae_scale_factor(model))


def check_models(workflow: Workflow, store: ModelStore, field: str) -> None:
    index = {n.id: i for i, n in enumerate(workflow.nodes)}
    denoise = workflow.denoise_node()
    model = denoise.model
    family = store.family(model)
    for node in workflow.nodes:
        where = f"{field}.nodes[{index[node.id]}]"
        what = f"node {node.id!r} ({node.operator}, model {node.model!r})"
        if node.operator == Operator.TEXT_ENCODE:
            if (store.family(node.model).name != family.name
                    or prompt_width(store, node.model) != prompt_width(store, model)):
                raise InvalidArgument(f"{what} does not make the text embeddings of "
                                      f"{family.name} model {model!r}", field=f"{where}.model")
        elif node.operator in (Operator.VAE_ENCODE, Operator.VAE_DECODE):
            if (store.family(node.model).name != family.name
                    or _vae_layout(store, node.model) != _vae_layout(store, model)):
                raise InvalidArgument(f"{what} does not have the VAE of {model!r}",
                                      field=f"{where}.model")
        elif node.operator == Operator.EMBED_ADAPTER:
            _check_adapter(workflow, node, store, model, what, where)
    _check_latent(workflow, denoise, store, f"{field}.nodes[{index[denoise.id]}]")
    _check_addons(denoise, store, f"{field}.nodes[{index[denoise.id]}]")


def _check_latent(workflow: Workflow, denoise: Node, store: ModelStore, where: str) -> None:
    latent = denoise.inputs["latent"]
    assert isinstance(latent, FromNode)
    source = workflow.node(latent.node)
    inpaint = source.operator == Operator.VAE_ENCODE and source.mode == "inpaint"
    kind = store.pipeline(denoise.model).kind
    if kind == "inpainting" and not inpaint:
        raise InvalidArgument(f"{denoise.model!r} is an inpainting model: its latent comes from "
                              "a vae_encode node in mode inpaint", field=f"{where}.inputs.latent")
    if inpaint and kind != "inpainting" and not store.family(denoise.model).inpaints_on_base:
        raise InvalidArgument(f"{denoise.model!r} cannot inpaint; use an inpainting model",
                              field=f"{where}.model")
    if inpaint and "mask" not in source.inputs:
        raise InvalidArgument(f"vae_encode node {source.id!r} in mode inpaint needs a mask",
                              field=f"{where}.inputs.latent")
    if inpaint and denoise.controlnets:
        raise InvalidArgument("ControlNets are not served with inpainting models",
                              field=f"{where}.controlnets")


def _check_adapter(workflow: Workflow, node: Node, store: ModelStore, model: str, what: str,
                   where: str) -> None:
    width_in, width_out = adapter_widths(store.get(node.model, ("embed_adapter",)).path)
    source = node.inputs["embeddings"]
    assert isinstance(source, FromNode)
    ar_model = workflow.node(source.node).model
    predicted = ar_width(store.get(ar_model, ("ar_embed",)).path)
    if predicted != width_in:
        raise InvalidArgument(f"{what} takes embeddings of width {width_in}, but AR model "
                              f"{ar_model!r} predicts width {predicted}",
                              field=f"{where}.inputs.embeddings")
    if width_out != prompt_width(store, model):
        raise InvalidArgument(f"{what} gives embeddings of width {width_out}, but "
                              f"{model!r} takes text of width {prompt_width(store, model)}",
                              field=f"{where}.model")
    if len(store.family(model).text_components) > 1 and "pooled" not in node.inputs:
        raise InvalidArgument(f"{what}: {store.family(model).name} models also take pooled "
                              "text embeddings; bind 'pooled' to a text_encode node",
                              field=f"{where}.inputs.pooled")


def _check_addons(denoise: Node, store: ModelStore, where: str) -> None:
    model = denoise.model
    family = store.family(model)
    for kind, uses in (("controlnet", denoise.controlnets), ("ip_adapter", denoise.ip_adapters),
                       ("lora", denoise.loras)):
        if uses and kind not in family.addons:
            raise InvalidArgument(f"{kind} is not served on {family.name} models ({model!r})",
                                  field=f"{where}.{kind}s")
    for i, c in enumerate(denoise.controlnets):
        at = f"{where}.controlnets[{i}]"
        store.get(c.name, ("controlnet",), field=f"{at}.name")
        if not family.fits_controlnet(store.controlnet_config(c.name),
                                      store.denoiser_config(model)):
            raise InvalidArgument(f"ControlNet {c.name!r} does not fit {family.name} model "
                                  f"{model!r}", field=f"{at}.name")
        in_range(c.scale, 0.0, 10.0, f"{at}.scale")
        in_range(c.guidance_start, 0.0, 1.0, f"{at}.guidance_start")
        in_range(c.guidance_end, 0.0, 1.0, f"{at}.guidance_end")
        if c.guidance_start >= c.guidance_end:
            raise InvalidArgument(f"guidance_start={c.guidance_start} must be below "
                                  f"guidance_end={c.guidance_end}", field=f"{at}.guidance_start")
    for i, a in enumerate(denoise.ip_adapters):
        at = f"{where}.ip_adapters[{i}]"
        store.get(a.name, ("ip_adapter",), field=f"{at}.name")
        if store.ip_adapter_width(a.name) != prompt_width(store, model):
            raise InvalidArgument(f"IP-Adapter {a.name!r} does not fit {model!r}",
                                  field=f"{at}.name")
        in_range(a.scale, 0.0, MAX_IP_SCALE, f"{at}.scale")
    seen: set[str] = set()
    for i, lo in enumerate(denoise.loras):
        at = f"{where}.loras[{i}]"
        if lo.name in seen:
            raise InvalidArgument(f"LoRA {lo.name!r} is listed twice", field=f"{at}.name")
        seen.add(lo.name)
        check_fit(store, lo.name, model, f"{at}.name")
        in_range(lo.scale, -4.0, 4.0, f"{at}.scale")
        in_range(lo.encoder_scale, -4.0, 4.0, f"{at}.text_encoder_scale")
