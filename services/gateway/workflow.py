"""Runs one request's graph: text encode -> (VAE encode) -> denoise -> VAE decode.

Tensors flow between the node services directly: the gateway passes along the
references each producer returns (the producer exported them for the peer
that will read them), and reads only the final image itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
import torch

from diffusion.v1 import (
    denoiser_pb2,
    denoiser_pb2_grpc,
    gateway_pb2,
    lora_cache_pb2,
    lora_cache_pb2_grpc,
    tensor_pb2,
    tensor_pb2_grpc,
    text_encoder_pb2,
    text_encoder_pb2_grpc,
    vae_pb2,
    vae_pb2_grpc,
)
from services.common.channels import ChannelPool
from services.common.errors import Cancelled, DeadlineExceeded, ResourceExhausted, from_rpc_error
from services.common.fleet_state import FleetState
from services.common.transport import TensorExporter, TensorImporter, local_peer
from services.gateway import images
from services.gateway.depth import DepthTracker
from services.gateway.edit_dispatch import EditDispatch
from services.gateway.placement import Placement, Placer, peer_of
from services.gateway.validation import Workflow

log = logging.getLogger("dfleet.gateway")

Emit = Callable[[gateway_pb2.GenerateEvent], None]


@dataclass
class Outcome:
    pixels: np.ndarray
    png: bytes
    metadata: dict[str, str]


class WorkflowRunner:
    """Stateless across requests; one instance per gateway process."""

    def __init__(self, fleet: FleetState, channels: ChannelPool, exporter: TensorExporter,
                 importer: TensorImporter, inline_max_bytes: int,
                 replica_wait_s: float = 30.0, edits: EditDispatch | None = None) -> None:
        self.fleet = fleet
        self.edits = edits  # template edits: mask-aware placement and attachments
        self.placer = Placer(fleet)
        self.channels = channels
        self.exporter = exporter
        self.importer = importer
        self.inline_max_bytes = inline_max_bytes
        self.replica_wait_s = replica_wait_s

    def run(self, flow: Workflow, emit: Emit, deadline: float | None,
            is_cancelled: Callable[[], bool], depth: DepthTracker) -> Outcome:
        started = time.monotonic()
        depth.enter("text_encoder", flow.model)
        depth.enter("denoiser", flow.model)
        for c in flow.controlnets:
            depth.enter("controlnet", c.name)
        chosen = self.placer.best_denoiser(
            flow.model, flow.steps, [lo.name for lo in flow.loras],
            flow.width * flow.height * 4 * 2, self._wait_limit(deadline))
        if deadline is not None and chosen.total_ms / 1e3 > deadline - time.monotonic():
            raise ResourceExhausted(
                f"cannot finish before the deadline: the best replica needs about "
                f"{chosen.total_ms / 1e3:.1f} s ({chosen.wait_and_run_ms:.0f} ms queue and run, "
                f"{chosen.load_ms:.0f} ms loading); retry later or allow more time")
        denoiser = chosen.replica
        if self.edits is not None and flow.template_id:
            denoiser = self.edits.place(flow, self.fleet.replicas("denoiser") or [denoiser])
        self.placer.assign(denoiser.replica_id)
        try:
            place = self.placer.place(flow.model, [c.name for c in flow.controlnets],
                                      bool(flow.loras), denoiser, self._wait_limit(deadline),
                                      cfg_parallel=flow.cfg_parallel and flow.do_cfg)
        except BaseException:
            self.placer.unassign(denoiser.replica_id)
            raise
        try:
            return self._run(flow, place, emit, deadline, is_cancelled, started, depth)
        finally:
            self.placer.unassign(denoiser.replica_id)
            self._release(flow.request_id, place)
            if self.edits is not None and flow.template_id:
                self.edits.release(flow)

    def _wait_limit(self, deadline: float | None) -> float:
        """How long placement may wait for a replica to come up (scale from zero)."""
        limit = self.replica_wait_s
        if deadline is not None:
            limit = min(limit, deadline - time.monotonic())
        return max(0.0, limit)

    def _timeout(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("deadline passed before the request finished")
        return left

    def _call(self, what: str, fn: Callable[..., object], request: object,
              deadline: float | None, request_id: str) -> object:
        try:
            return fn(request, timeout=self._timeout(deadline),
                      metadata=(("x-request-id", request_id),))
        except grpc.RpcError as err:
            raise from_rpc_error(err, what) from err

    def _run(self, flow: Workflow, place: Placement, emit: Emit, deadline: float | None,
             is_cancelled: Callable[[], bool], started: float, depth: DepthTracker) -> Outcome:
        rid = flow.request_id
        den_peer = peer_of(place.denoiser, self.inline_max_bytes)
        if place.lora_cache is not None:
            lora_stub = lora_cache_pb2_grpc.LoraCacheStub(self._channel(place.lora_cache))
            lora_stub.Prepare.future(lora_cache_pb2.PrepareLoraRequest(
                request_id=rid, loras=[lo.name for lo in flow.loras]), timeout=60)
        te = text_encoder_pb2_grpc.TextEncoderStub(self._channel(place.text_encoder))
        prompts = [flow.prompt] + ([flow.negative_prompt] if flow.do_cfg else [])
        encoded = self._call("text_encoder", te.Encode, text_encoder_pb2.EncodeRequest(
            request_id=rid, model=flow.model, prompts=prompts, peer=den_peer), deadline, rid)
        depth.leave("text_encoder", flow.model)
        embeds = list(encoded.embeddings)  # type: ignore[attr-defined]
        vae = vae_pb2_grpc.VaeStub(self._channel(place.vae))
        vae_peer = peer_of(place.vae, self.inline_max_bytes)

        def moments(image: torch.Tensor | None) -> tensor_pb2.TensorRef | None:
            if image is None:
                return None
            depth.enter("vae", flow.model)
            reply = self._call("vae", vae.Encode, vae_pb2.VaeEncodeRequest(
                request_id=rid, model=flow.model, peer=den_peer,
                image=self.exporter.export(image, vae_peer, request_id=rid)), deadline, rid)
            depth.leave("vae", flow.model)
            return reply.moments  # type: ignore[attr-defined]

        request = denoiser_pb2.DenoiseRequest(
            request_id=rid, model=flow.model, prompt_embeds=embeds[0],
            negative_prompt_embeds=embeds[1] if flow.do_cfg else None,
            width=flow.width, height=flow.height, num_inference_steps=flow.steps,
            guidance_scale=flow.guidance_scale, seed=flow.seed, strength=flow.strength,
            image_moments=moments(flow.init_image),
            masked_image_moments=moments(flow.masked_image),
            mask=self.exporter.export(flow.mask, den_peer, request_id=rid)
            if flow.mask is not None else None,
            controlnets=[denoiser_pb2.ControlNetAttachment(
                name=c.name, address=r.address, peer=peer_of(r, self.inline_max_bytes),
                cond_image=self.exporter.export(c.image, den_peer, request_id=rid),
                scale=c.scale, guidance_start=c.guidance_start, guidance_end=c.guidance_end)
                for c, r in zip(flow.controlnets, place.controlnets, strict=True)],
            loras=[denoiser_pb2.LoraAttachment(
                name=lo.name, scale=lo.scale, address=place.lora_cache.address)
                for lo in flow.loras] if place.lora_cache else [],
            peer=vae_peer, preview_every=1 if flow.preview else 0,
            lora_async_steps=flow.lora_async_steps, stale_controlnet=flow.stale_controlnet,
            cfg_partner=denoiser_pb2.CfgPartner(
                address=place.cfg_partner.address,
                peer=peer_of(place.cfg_partner, self.inline_max_bytes))
            if place.cfg_partner is not None else None)
        if self.edits is not None and flow.template_id:
            self.edits.attach(flow, request, den_peer)
        result = self._denoise(flow, place, request, vae, emit, deadline, is_cancelled)
        depth.leave("denoiser", flow.model)
        for c in flow.controlnets:
            depth.leave("controlnet", c.name)
        depth.enter("vae", flow.model)
        decoded = self._call("vae", vae.Decode, vae_pb2.VaeDecodeRequest(
            request_id=rid, model=flow.model, latents=result.latents, peer=local_peer()),
            deadline, rid)
        depth.leave("vae", flow.model)
        pixels = images.to_pixels(self.importer.load(decoded.image))  # type: ignore[attr-defined]
        metadata = {
            "workflow": flow.kind, "model": flow.model, "seed": str(flow.seed),
            "steps": str(result.steps), "width": str(flow.width), "height": str(flow.height),
            "denoiser": place.denoiser.replica_id,
            "denoise_queue_ms": f"{result.queue_ms:.1f}", "denoise_run_ms": f"{result.run_ms:.1f}",
            "denoise_batch_peak": str(result.batch_peak),
            "total_ms": f"{(time.monotonic() - started) * 1e3:.1f}"}
        if place.cfg_partner is not None:
            metadata["cfg_partner"] = place.cfg_partner.replica_id
        if flow.loras:
            metadata["lora_joined_step"] = str(result.lora_joined_step)
        if flow.controlnets:
            metadata["denoise_controlnet_wait_ms"] = f"{result.controlnet_wait_ms:.1f}"
        if self.edits is not None and flow.template_id:
            metadata.update(self.edits.result(flow, result))
        return Outcome(pixels=pixels, png=images.to_png(pixels), metadata=metadata)

    def _denoise(self, flow: Workflow, place: Placement, request: denoiser_pb2.DenoiseRequest,
                 vae: vae_pb2_grpc.VaeStub, emit: Emit, deadline: float | None,
                 is_cancelled: Callable[[], bool]) -> denoiser_pb2.DenoiseResult:
        rid = flow.request_id
        stub = denoiser_pb2_grpc.DenoiserStub(self._channel(place.denoiser))
        call = stub.Denoise(request, timeout=self._timeout(deadline),
                            metadata=(("x-request-id", rid),))
        try:
            for event in call:
                if is_cancelled():
                    call.cancel()
                    break
                if event.HasField("result"):
                    return event.result
                progress = gateway_pb2.Progress(step=event.progress.step,
                                                total_steps=event.progress.total_steps)
                if self.edits is not None and flow.template_id:
                    self.edits.progress(flow, progress.step, progress.total_steps)
                if event.progress.HasField("preview_latents"):
                    preview = self._call("vae", vae.Decode, vae_pb2.VaeDecodeRequest(
                        request_id=rid, model=flow.model, peer=local_peer(),
                        latents=event.progress.preview_latents), deadline, rid)
                    pixels = images.to_pixels(self.importer.load(preview.image))  # type: ignore[attr-defined]
                    progress.preview.data = images.to_png(pixels)
                emit(gateway_pb2.GenerateEvent(request_id=rid, progress=progress))
        except grpc.RpcError as err:
            if is_cancelled():
                raise Cancelled("request cancelled", field="request_id") from err
            raise from_rpc_error(err, "denoiser") from err
        raise Cancelled("request cancelled", field="request_id")

    def _channel(self, replica: object) -> grpc.Channel:
        return self.channels.get(replica.address)  # type: ignore[attr-defined]

    def _release(self, request_id: str, place: Placement) -> None:
        """No lease outlives its request: every producer frees what is left of it."""
        self.exporter.release_request(request_id)
        for replica in {r.address: r for r in place.replicas()}.values():
            stub = tensor_pb2_grpc.TensorLeasesStub(self._channel(replica))
            try:
                stub.Release.future(tensor_pb2.ReleaseRequest(request_id=request_id), timeout=5)
            except Exception:  # noqa: BLE001 - leases expire anyway
                log.warning("release failed", exc_info=True, extra={"request_id": request_id})
