"""gRPC <-> DenoiserEngine: a DenoiseRequest becomes a DenoiseJob whose events are streamed.

The request's own fields are converted here; its ``addons`` by the add-on registry
(:mod:`services.denoiser.addons`), which also builds the add-ons once the job is prepared.
Also the partner side of CFG parallelism (``CfgPass``): a
:class:`~services.denoiser.cfg_pass.PassSampler` with the request's add-ons built for its rows
by the same registry.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import torch

from diffusion.v1 import denoiser_pb2, denoiser_pb2_grpc
from services.common import conditioning_wire, schedulers
from services.common.deadlines import time_left
from services.common.errors import InvalidArgument
from services.common.input_checks import check_finite, check_side, check_steps
from services.common.server import ServiceRuntime
from services.common.transport.ring_offer import take_offer
from services.common.transport.ring_socket import RingClosed
from services.common.transport.ring_stream import RingStream
from services.denoiser.addons import AddonRegistry, BuildContext
from services.denoiser.addons.base import Addon
from services.denoiser.cfg_pass import PassSampler, PassStep, read_ring_steps
from services.denoiser.engine import DenoiserEngine
from services.denoiser.guiders import UNCOND
from services.denoiser.job import DenoiseJob, ErrorEvent, FinalEvent, StepEvent
from services.denoiser.request_state import RequestState
from services.denoiser.work import DenoiseWork

EVENT_POLL_S = 0.5
MAX_IMAGES = 8
CONDITIONING = {"prompt_embeds", "pooled_prompt_embeds"}   # what the families' encoders make


class DenoiserServicer(denoiser_pb2_grpc.DenoiserServicer):
    def __init__(self, engine: DenoiserEngine, runtime: ServiceRuntime,
                 registry: AddonRegistry) -> None:
        self.engine = engine
        self.runtime = runtime
        self.registry = registry
        self._jobs: dict[str, DenoiseJob] = {}
        self._lock = threading.Lock()

    def Denoise(self, request: denoiser_pb2.DenoiseRequest,
                context: grpc.ServicerContext) -> Iterator[denoiser_pb2.DenoiseEvent]:
        job = self._job(request, context)
        with self._lock:
            self._jobs[job.request_id] = job
        try:
            context.add_callback(job.cancelled.set)
            timeout = time_left(context)

            def build(state: RequestState) -> list[Addon]:
                return self.registry.build(job.addons, BuildContext(
                    request_id=job.request_id, model=job.model,
                    num_inference_steps=job.num_inference_steps,
                    total_steps=len(state.timesteps), kinds=state.guider.kinds,
                    embeds=state.prompt_embeds, num_images=job.num_images, timeout=timeout,
                    engine=self.engine, specs=job.addons, state=state,
                    added_cond=state.added_cond, shared=state.shared, drawn=state.drawn))

            self.engine.submit(job, build)
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

    def CfgPass(self, requests: Iterator[denoiser_pb2.CfgPassRequest],
                context: grpc.ServicerContext) -> Iterator[denoiser_pb2.CfgPassResponse]:
        first = next(requests, None)
        if first is None or first.WhichOneof("message") != "open":
            raise InvalidArgument("the first message must be open", field="open")
        rid, opening = first.request_id, first.open
        ring: RingStream | None = None
        try:
            if opening.HasField("ring"):
                ring, answer = take_offer(opening.ring, True, self.runtime.role)
                if ring is not None:
                    context.add_callback(ring.shutdown)  # a cancelled call wakes the reader
                yield denoiser_pb2.CfgPassResponse(ring=answer)
            yield from self._pass(rid, opening, requests, context, ring)
        finally:
            if ring is not None:
                ring.close()

    def _pass(self, rid: str, opening: denoiser_pb2.CfgPassOpen,
              requests: Iterator[denoiser_pb2.CfgPassRequest], context: grpc.ServicerContext,
              ring: RingStream | None) -> Iterator[denoiser_pb2.CfgPassResponse]:
        embeds = self._load(opening.prompt_embeds, "open.prompt_embeds")
        if embeds is None:
            raise InvalidArgument("prompt embeddings are required", field="open.prompt_embeds")
        added = {key: self._load(ref, f"open.added_cond[{key}]")
                 for key, ref in opening.added_cond.items()}
        info = self.engine.load_unet(opening.model).info
        sampler = PassSampler(rid, opening.model, embeds, added,  # type: ignore[arg-type]
                              opening.total_steps, info.latent_channels)
        self._check_addons(opening.addons, "open.addons.")
        specs = self.registry.decode(opening.addons, self._load)
        addons = self.registry.build(specs, BuildContext(
            request_id=rid, model=opening.model, num_inference_steps=opening.total_steps,
            total_steps=opening.total_steps, kinds=(UNCOND,), embeds=embeds,
            num_images=opening.num_images or 1, timeout=time_left(context),
            engine=self.engine, specs=specs, partner=True, follow_weights=sampler.with_loras,
            added_cond=sampler.added_cond))
        context.add_callback(sampler.cancelled.set)
        context.add_callback(self.engine.wake)
        self.engine.add(DenoiseWork(sampler, addons))
        requester_done = threading.Event()
        threading.Thread(target=self._read_pass, args=(ring or requests, sampler, requester_done),
                         daemon=True, name=f"cfg-pass-{rid}").start()
        export = self.runtime.exporter.export
        try:
            while True:
                try:
                    answer = sampler.answers.get(timeout=EVENT_POLL_S)
                except queue.Empty:
                    continue
                if answer is None:
                    # The last answers may still be on their way: their shared memory must
                    # outlive the requester's reading them, so wait until it closes its side
                    # (or the leases' lifetime) before releasing what is left.
                    requester_done.wait(self.runtime.settings.lease_ttl_s)
                    return
                if isinstance(answer, Exception):
                    raise answer
                if ring is not None:
                    try:
                        ring.send({"step": answer.step}, [answer.noise])
                    except RingClosed:
                        return  # the requester is gone
                    continue
                yield denoiser_pb2.CfgPassResponse(
                    step=answer.step, release_lease_ids=answer.lease_ids,
                    noise_pred=export(answer.noise, opening.peer, request_id=rid))
        finally:
            self.runtime.exporter.release_request(rid)

    def _read_pass(self, source: Iterator[denoiser_pb2.CfgPassRequest] | RingStream,
                   sampler: PassSampler, done: threading.Event) -> None:
        try:
            if isinstance(source, RingStream):
                read_ring_steps(source, sampler, self.engine.wake)
                return
            for message in source:
                step = message.step
                sampler.push(PassStep(
                    step=step.step,
                    sample=self.runtime.importer.load(step.sample, release=False),
                    timestep=torch.tensor(step.timestep, dtype=torch.float64),
                    with_loras=step.with_loras,
                    lease_ids=[step.sample.lease.lease_id] if step.sample.lease.lease_id else []))
                self.runtime.exporter.release(step.release_lease_ids)
                self.engine.wake()
        except grpc.RpcError:
            pass
        finally:
            sampler.cancelled.set()
            self.engine.wake()
            done.set()

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
                preview = event.preview_latents
                yield denoiser_pb2.DenoiseEvent(progress=denoiser_pb2.DenoiseProgress(
                    step=event.step, total_steps=event.total_steps,
                    preview_latents=export(preview, request.peer, request_id=job.request_id)
                    if preview is not None else None))
            elif isinstance(event, FinalEvent):
                yield denoiser_pb2.DenoiseEvent(result=denoiser_pb2.DenoiseResult(
                    latents=export(event.latents.cpu(), request.peer, request_id=job.request_id),
                    steps=event.steps, queue_ms=event.queue_ms, run_ms=event.run_ms,
                    batch_peak=event.batch_peak, metadata=event.metadata))
                return
            elif isinstance(event, ErrorEvent):
                raise event.error

    def _guided(self, model: str) -> bool:
        """Whether ``model``'s family runs classifier-free guidance (Flux's is distilled into
        the model: its guidance scale is an input, not a second pass)."""
        return self.engine.load_unet(model).info.family.classifier_free_guidance

    def _load(self, ref: Any, field: str) -> torch.Tensor | None:
        if not ref.ByteSize():
            return None
        try:
            tensor: torch.Tensor = self.runtime.importer.load(ref)
            return tensor
        except Exception as exc:
            raise InvalidArgument(f"cannot read tensor: {exc}", field=field) from exc

    def _check_inputs(self, request: denoiser_pb2.DenoiseRequest) -> None:
        """Whoever calls: sizes, steps and numbers a step loop can run, peers of the fleet."""
        check_side(request.width, "width")
        check_side(request.height, "height")
        check_steps(request.num_inference_steps, "num_inference_steps")
        check_finite(request.guidance_scale, "guidance_scale", 0.0, 1000.0)
        check_finite(request.strength, "strength", 0.0, 1.0)
        self._check_addons(request.addons, "addons.")

    def _check_addons(self, addons: denoiser_pb2.Addons, prefix: str) -> None:
        """Every peer address a caller names must be a live replica of the fleet."""
        for i, c in enumerate(addons.controlnet.controlnets):
            where = f"{prefix}controlnet.controlnets[{i}]"
            check_finite(c.scale, f"{where}.scale", -1000.0, 1000.0)
            self.runtime.peers.check("controlnet", c.address, f"{where}.address")
        for i, lo in enumerate(addons.lora.loras):
            where = f"{prefix}lora.loras[{i}]"
            check_finite(lo.scale, f"{where}.scale", -1000.0, 1000.0)
            self.runtime.peers.check("lora_cache", lo.address, f"{where}.address")
        self.runtime.peers.check("denoiser", addons.cfg_partner.address,
                                 f"{prefix}cfg_partner.address")

    def _conditioning(self, message: Any, field: str) -> dict[str, torch.Tensor]:
        found = conditioning_wire.from_proto(message, self._load, field)
        unknown = sorted(set(found) - CONDITIONING)
        if unknown:
            raise InvalidArgument(f"unknown conditioning {unknown[0]!r}; known: "
                                  f"{', '.join(sorted(CONDITIONING))}", field=field)
        if "prompt_embeds" not in found:
            raise InvalidArgument("prompt embeddings are required", field=f"{field}.prompt_embeds")
        return found

    def _job(self, request: denoiser_pb2.DenoiseRequest,
             context: grpc.ServicerContext) -> DenoiseJob:
        if not request.request_id:
            raise InvalidArgument("request_id is required", field="request_id")
        self._check_inputs(request)
        if request.num_images > MAX_IMAGES:
            raise InvalidArgument(f"at most {MAX_IMAGES}", field="num_images")
        cond = self._conditioning(request.conditioning, "conditioning")
        negative = (self._conditioning(request.negative_conditioning, "negative_conditioning")
                    if request.HasField("negative_conditioning") else {})
        if request.guidance_scale > 1.0 and not negative and self._guided(request.model):
            raise InvalidArgument("needed when guidance_scale > 1", field="negative_conditioning")
        remaining = time_left(context)
        return DenoiseJob(
            request_id=request.request_id, model=request.model,
            prompt_embeds=cond["prompt_embeds"],
            negative_prompt_embeds=negative.get("prompt_embeds"),
            pooled_prompt_embeds=cond.get("pooled_prompt_embeds"),
            negative_pooled_prompt_embeds=negative.get("pooled_prompt_embeds"),
            width=request.width, height=request.height,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale, seed=request.seed,
            strength=request.strength or 1.0,
            image_moments=self._load(request.image_moments, "image_moments"),
            mask=self._load(request.mask, "mask"),
            masked_image_moments=self._load(request.masked_image_moments,
                                            "masked_image_moments"),
            scheduler=schedulers.check_name(request.scheduler),
            num_images=request.num_images or 1,
            addons=self.registry.decode(request.addons, self._load),
            priority=request.priority,
            deadline=(time.monotonic() + remaining) if remaining is not None else None)
