"""gRPC <-> DenoiserEngine: turns a DenoiseRequest into a DenoiseJob and streams its events."""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import grpc
import torch

from diffusion.v1 import denoiser_pb2, denoiser_pb2_grpc, lora_cache_pb2, lora_cache_pb2_grpc
from services.common.errors import InvalidArgument, from_rpc_error
from services.common.server import ServiceRuntime
from services.common.transport import local_peer
from services.denoiser.controlnet_link import ControlNetLink
from services.denoiser.engine import DenoiserEngine
from services.denoiser.job import (ControlNetSpec, DenoiseJob, ErrorEvent, FinalEvent, LoraSpec,
                                   StepEvent)
from services.denoiser.lora_patch import LoraLayer, parse_lora

EVENT_POLL_S = 0.5


class DenoiserServicer(denoiser_pb2_grpc.DenoiserServicer):
    def __init__(self, engine: DenoiserEngine, runtime: ServiceRuntime) -> None:
        self.engine = engine
        self.runtime = runtime
        self._jobs: dict[str, DenoiseJob] = {}
        self._lora_layers: dict[str, dict[str, LoraLayer]] = {}
        self._lock = threading.Lock()

    def Denoise(self, request: denoiser_pb2.DenoiseRequest,
                context: grpc.ServicerContext) -> Iterator[denoiser_pb2.DenoiseEvent]:
        job = self._job(request, context)
        links: list[ControlNetLink] = []
        try:
            loras = {spec.name: self._lora(spec, request.request_id) for spec in job.loras}
            links = self._links(job, context)
            with self._lock:
                self._jobs[job.request_id] = job
            context.add_callback(job.cancelled.set)
            self.engine.submit(job, links, loras)
        except Exception:
            for link in links:
                link.close()
            raise
        try:
            yield from self._events(job, request, context)
        finally:
            with self._lock:
                self._jobs.pop(job.request_id, None)

    def Cancel(self, request: denoiser_pb2.DenoiseCancelRequest,
               context: grpc.ServicerContext) -> denoiser_pb2.DenoiseCancelResponse:
        with self._lock:
            job = self._jobs.get(request.request_id)
        if job is not None:
            job.cancelled.set()
        return denoiser_pb2.DenoiseCancelResponse(cancelled=job is not None)

    def _events(self, job: DenoiseJob, request: denoiser_pb2.DenoiseRequest,
                context: grpc.ServicerContext) -> Iterator[denoiser_pb2.DenoiseEvent]:
        export = self.runtime.exporter.export
        while True:
            try:
                event = job.events.get(timeout=EVENT_POLL_S)
            except queue.Empty:
                if not context.is_active():
                    job.cancelled.set()
                continue
            if isinstance(event, StepEvent):
                preview = (export(event.preview_latents, request.peer,
                                  request_id=job.request_id)
                           if event.preview_latents is not None else None)
                yield denoiser_pb2.DenoiseEvent(progress=denoiser_pb2.DenoiseProgress(
                    step=event.step, total_steps=event.total_steps, preview_latents=preview))
            elif isinstance(event, FinalEvent):
                yield denoiser_pb2.DenoiseEvent(result=denoiser_pb2.DenoiseResult(
                    latents=export(event.latents, request.peer, request_id=job.request_id),
                    steps=event.steps, queue_ms=event.queue_ms, run_ms=event.run_ms,
                    batch_peak=event.batch_peak))
                return
            elif isinstance(event, ErrorEvent):
                raise event.error

    def _load(self, ref: object, field: str) -> torch.Tensor | None:
        if not ref.ByteSize():  # type: ignore[attr-defined]
            return None
        try:
            return self.runtime.importer.load(ref)  # type: ignore[arg-type]
        except Exception as exc:
            raise InvalidArgument(f"cannot read tensor: {exc}", field=field) from exc

    def _job(self, request: denoiser_pb2.DenoiseRequest,
             context: grpc.ServicerContext) -> DenoiseJob:
        if not request.request_id:
            raise InvalidArgument("request_id is required", field="request_id")
        if request.num_inference_steps < 1:
            raise InvalidArgument("must be at least 1", field="num_inference_steps")
        embeds = self._load(request.prompt_embeds, "prompt_embeds")
        if embeds is None:
            raise InvalidArgument("prompt embeddings are required", field="prompt_embeds")
        negative = self._load(request.negative_prompt_embeds, "negative_prompt_embeds")
        if request.guidance_scale > 1.0 and negative is None:
            raise InvalidArgument("needed when guidance_scale > 1", field="negative_prompt_embeds")
        remaining = context.time_remaining()
        controlnets = [
            ControlNetSpec(name=c.name, address=c.address, peer=c.peer,
                           cond_image=self._load(c.cond_image, "controlnets.cond_image"),
                           scale=c.scale, guidance_start=c.guidance_start,
                           guidance_end=c.guidance_end or 1.0)
            for c in request.controlnets]
        return DenoiseJob(
            request_id=request.request_id, model=request.model, prompt_embeds=embeds,
            negative_prompt_embeds=negative, width=request.width, height=request.height,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale, seed=request.seed,
            strength=request.strength or 1.0,
            image_moments=self._load(request.image_moments, "image_moments"),
            mask=self._load(request.mask, "mask"),
            masked_image_moments=self._load(request.masked_image_moments,
                                            "masked_image_moments"),
            controlnets=controlnets,
            loras=[LoraSpec(lo.name, lo.scale, lo.address) for lo in request.loras],
            preview_every=request.preview_every,
            deadline=(time.monotonic() + remaining) if remaining is not None else None)

    def _links(self, job: DenoiseJob, context: grpc.ServicerContext) -> list[ControlNetLink]:
        if not job.controlnets:
            return []
        embeds = job.prompt_embeds
        if job.do_cfg:
            assert job.negative_prompt_embeds is not None
            embeds = torch.cat([job.negative_prompt_embeds, job.prompt_embeds])
        links = []
        for spec in job.controlnets:
            image = torch.cat([spec.cond_image] * 2) if job.do_cfg else spec.cond_image
            links.append(ControlNetLink(
                self.runtime.channels, spec.address, job.request_id, spec.name, image, embeds,
                self.runtime.exporter, self.runtime.importer, spec.peer, local_peer(),
                context.time_remaining()))
        return links

    def _lora(self, spec: LoraSpec, request_id: str) -> dict[str, LoraLayer]:
        with self._lock:
            cached = self._lora_layers.get(spec.name)
        if cached is not None:
            return cached
        stub = lora_cache_pb2_grpc.LoraCacheStub(self.runtime.channels.get(spec.address))
        try:
            response = stub.Fetch(lora_cache_pb2.FetchLoraRequest(
                request_id=request_id, lora=spec.name, peer=local_peer()), timeout=60)
        except grpc.RpcError as err:
            raise from_rpc_error(err, f"lora cache {spec.address}") from err
        tensors = {nt.name: self.runtime.importer.load(nt.tensor) for nt in response.tensors}
        layers = parse_lora(tensors, dict(response.metadata))
        with self._lock:
            self._lora_layers[spec.name] = layers
        return layers

