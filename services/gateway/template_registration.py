"""RegisterTemplate: check the template, encode its prompt and image once, store it, warm it up.

Warming up runs the template's recording on a denoiser: its whole image
unmasked, its own prompt and recipe, with the recorder on. The record
(the activations later edits reuse) stays in that node's activation store;
its size comes back as ``cache_bytes``. Without warm-up the first cached
edit of the template records it.
"""

from __future__ import annotations

import logging
import math
import time
import uuid

import grpc
import torch

from diffusion.v1 import (
    denoiser_pb2,
    denoiser_pb2_grpc,
    gateway_pb2,
    tensor_pb2,
    text_encoder_pb2,
    text_encoder_pb2_grpc,
    vae_pb2,
    vae_pb2_grpc,
)
from services.common import conditioning_wire
from services.common.errors import InvalidArgument, Unavailable, from_rpc_error
from services.common.model_store import ModelStore
from services.common.transport import local_peer
from services.gateway import images
from services.gateway.placement import Placement, peer_of
from services.gateway.request_flow import RequestFlow
from services.gateway.settings import GatewaySettings
from services.gateway.templates import Template, TemplateRegistry, expand, new_template_id

log = logging.getLogger("dfleet.gateway.templates")
CALL_TIMEOUT_S = 600.0


class TemplateRegistrar:
    def __init__(self, settings: GatewaySettings, store: ModelStore, registry: TemplateRegistry,
                 runner: RequestFlow) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.runner = runner

    def _model(self, name: str) -> str:
        if not name:
            found = sorted(e.name for e in self.store.entries("inpainting"))
            if not found:
                raise InvalidArgument("no model given and the fleet has no inpainting model",
                                      field="model")
            return found[0]
        if self.store.pipeline(name).kind != "inpainting":
            raise InvalidArgument(f"templates are edited by inpainting models; {name!r} is "
                                  "not one", field="model")
        return name

    def _template(self, request: gateway_pb2.RegisterTemplateRequest) -> tuple[Template, object]:
        limits = self.settings
        model = self._model(request.model)
        if not request.HasField("image"):
            raise InvalidArgument("a template needs its image", field="image")
        picture = images.decode(request.image.data, "image", limits.max_image_bytes)
        vsf = 2 ** (len(self.store.vae_block_channels(model)) - 1)
        width, height = picture.size[0] // vsf * vsf, picture.size[1] // vsf * vsf
        if min(width, height) < vsf or max(width, height) > limits.max_side:
            raise InvalidArgument(f"image of {picture.size[0]}x{picture.size[1]} is outside "
                                  f"{vsf}..{limits.max_side} pixels a side", field="image")
        steps = request.num_inference_steps or limits.default_steps
        if steps > limits.max_steps:
            raise InvalidArgument(f"{steps} is over the limit of {limits.max_steps}",
                                  field="num_inference_steps")
        guidance = (request.guidance_scale if request.has_guidance_scale
                    else limits.default_guidance)
        if not (math.isfinite(guidance) and 0.0 <= guidance <= limits.max_guidance):
            raise InvalidArgument(f"{guidance} is outside [0, {limits.max_guidance}]",
                                  field="guidance_scale")
        if len(request.prompt) > limits.max_prompt_chars:
            raise InvalidArgument(f"longer than {limits.max_prompt_chars} characters",
                                  field="prompt")
        empty = torch.empty(0)
        template = Template(new_template_id(), model, width, height, int(request.seed), steps,
                            float(guidance), request.prompt, image_png=request.image.data,
                            conditioning={}, negative_conditioning=None, image_moments=empty)
        return template, images.init_image(picture, width, height, vsf)

    def register(self, request: gateway_pb2.RegisterTemplateRequest
                 ) -> gateway_pb2.RegisterTemplateResponse:
        template, init = self._template(request)
        rid = request.request_id or f"register-{uuid.uuid4().hex[:16]}"
        runner = self.runner
        chosen = runner.placer.best_denoiser(template.model, template.steps, [],
                                             0, runner.replica_wait_s)
        place = runner.placer.place(template.model, chosen.replica, runner.replica_wait_s)
        try:
            self._encode(template, init, place, rid)
            self.registry.put(template)
            if request.warm_up:
                template.cache_bytes = self._warm_up(template, place, rid)
                self.registry.set_cache_bytes(template.template_id, template.cache_bytes)
        finally:
            self._release(rid, place)
        log.info("template registered", extra={"request_id": rid,
                                               "template_id": template.template_id})
        return gateway_pb2.RegisterTemplateResponse(template_id=template.template_id,
                                                    cache_bytes=template.cache_bytes)

    def expand(self, request: gateway_pb2.GenerateRequest) -> gateway_pb2.GenerateRequest:
        return expand(request, self.registry.get(request.template_id))

    def _call(self, what: str, fn: object, message: object, rid: str) -> object:
        try:
            return fn(message, timeout=CALL_TIMEOUT_S,  # type: ignore[operator]
                      metadata=(("x-request-id", rid),))
        except grpc.RpcError as err:
            raise from_rpc_error(err, what) from err

    def _encode(self, template: Template, init: torch.Tensor, place: Placement,
                rid: str) -> None:
        channels, importer = self.runner.channels, self.runner.importer
        te = text_encoder_pb2_grpc.TextEncoderStub(channels.get(place.text_encoder.address))
        family = self.store.family(template.model)
        zero = family.zero_empty_negative and bool(
            self.store.pipeline_config(template.model).get("force_zeros_for_empty_prompt"))
        inputs = [text_encoder_pb2.PromptInput(text=template.prompt)]
        if template.do_cfg:
            inputs.append(text_encoder_pb2.PromptInput(text="", zeros=zero))
        encoded = self._call("text_encoder", te.Encode, text_encoder_pb2.EncodeRequest(
            request_id=rid, model=template.model, inputs=inputs, peer=local_peer()), rid)

        def read(ref: tensor_pb2.TensorRef, field: str) -> torch.Tensor:
            tensor: torch.Tensor = importer.load(ref)
            return tensor
        prompts = [conditioning_wire.from_proto(c, read, "conditioning")
                   for c in encoded.prompts]  # type: ignore[attr-defined]
        template.conditioning = prompts[0]
        template.negative_conditioning = prompts[1] if template.do_cfg else None
        vae = vae_pb2_grpc.VaeStub(channels.get(place.vae.address))
        reply = self._call("vae", vae.Encode, vae_pb2.VaeEncodeRequest(
            request_id=rid, model=template.model, peer=local_peer(),
            image=self.runner.exporter.export(init, peer_of(place.vae), request_id=rid)), rid)
        template.image_moments = importer.load(reply.moments)  # type: ignore[attr-defined]

    def _warm_up(self, template: Template, place: Placement, rid: str) -> int:
        peer = peer_of(place.denoiser, self.runner.inline_max_bytes)
        export = self.runner.exporter.export

        def ref(t: torch.Tensor | None) -> tensor_pb2.TensorRef | None:
            return export(t, peer, request_id=rid) if t is not None else None

        def cond(c: dict[str, torch.Tensor] | None) -> tensor_pb2.Conditioning | None:
            return conditioning_wire.to_proto(c, ref) if c is not None else None  # type: ignore[arg-type]

        mask = torch.zeros(1, 1, template.height, template.width)
        request = denoiser_pb2.DenoiseRequest(
            request_id=rid, model=template.model, conditioning=cond(template.conditioning),
            negative_conditioning=cond(template.negative_conditioning),
            width=template.width, height=template.height,
            num_inference_steps=template.steps, guidance_scale=template.guidance_scale,
            seed=template.seed, strength=1.0, mask=ref(mask),
            masked_image_moments=ref(template.image_moments), peer=local_peer(),
            addons=denoiser_pb2.Addons(template_edit=denoiser_pb2.TemplateEditSpec(
                template_id=template.template_id, activation_cache=True, record=True)))
        stub = denoiser_pb2_grpc.DenoiserStub(self.runner.channels.get(place.denoiser.address))
        started = time.monotonic()
        try:
            for event in stub.Denoise(request, timeout=CALL_TIMEOUT_S,
                                      metadata=(("x-request-id", rid),)):
                if event.HasField("result"):
                    cache_bytes = int(event.result.metadata.get("cache_bytes", "0"))
                    log.info("template warmed up", extra={
                        "request_id": rid, "template_id": template.template_id,
                        "cache_bytes": cache_bytes,
                        "ms": round((time.monotonic() - started) * 1e3)})
                    return cache_bytes
        except grpc.RpcError as err:
            raise from_rpc_error(err, "denoiser") from err
        raise Unavailable("the denoiser ended the warm-up without a result")

    def _release(self, rid: str, place: Placement) -> None:
        self.runner.exporter.release_request(rid)
        self.runner.release_leases(rid, place.replicas())
