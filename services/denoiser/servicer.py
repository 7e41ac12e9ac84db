"""gRPC <-> DenoiserEngine: a DenoiseRequest becomes a DenoiseJob whose events are streamed.

Also the partner side of CFG parallelism (``CfgPass``), whose steps run in the
same engine as :class:`~services.denoiser.cfg_pass.PassWork`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import torch

from diffusion.v1 import denoiser_pb2, denoiser_pb2_grpc
from services.common.deadlines import time_left
from services.common.errors import InvalidArgument
from services.common.server import ServiceRuntime
from services.common.transport import local_peer
from services.denoiser.bal import BalProfiles
from services.denoiser.cfg_link import CfgPartnerLink
from services.denoiser.cfg_pass import PassStep, PassWork
from services.denoiser.controlnet_link import ControlNetLink
from services.denoiser.controlnet_set import ControlNetSet, StepLink
from services.denoiser.edit_work import submit_edit
from services.denoiser.engine import DenoiserEngine
from services.denoiser.job import (
    CfgPartnerSpec,
    ControlNetSpec,
    DenoiseJob,
    ErrorEvent,
    FinalEvent,
    LoraSpec,
    StepEvent,
)
from services.denoiser.lora_loader import LoraLoader
from services.denoiser.request_state import RequestState
from services.denoiser.template_editing import TemplateEdit, TemplateEditor
from services.denoiser.work import CfgPartner

EVENT_POLL_S = 0.5


class DenoiserServicer(denoiser_pb2_grpc.DenoiserServicer):
    def __init__(self, engine: DenoiserEngine, runtime: ServiceRuntime, loader: LoraLoader,
                 profiles: BalProfiles, editor: TemplateEditor | None = None) -> None:
        self.engine = engine
        self.editor = editor
        self.runtime = runtime
        self.loader = loader
        self.profiles = profiles
        self._jobs: dict[str, DenoiseJob] = {}
        self._lock = threading.Lock()

    def Denoise(self, request: denoiser_pb2.DenoiseRequest,
                context: grpc.ServicerContext) -> Iterator[denoiser_pb2.DenoiseEvent]:
        job = self._job(request, context)
        rows = job.prompt_embeds
        if job.do_cfg and job.cfg_partner is None:
            assert job.negative_prompt_embeds is not None
            rows = self.engine.compute.run(torch.cat, [job.negative_prompt_embeds,
                                                       job.prompt_embeds])
        controls = ControlNetSet([], 0, job.stale_controlnet)
        try:
            controls.links = self._links(job.request_id, job.controlnets, rows, context)
            with self._lock:
                self._jobs[job.request_id] = job
            context.add_callback(job.cancelled.set)
            loras = self.loader.load(job.loras, job.request_id) if job.loras else None
            bound = self.profiles.bound(job.lora_async_steps, job.model,
                                        [spec.name for spec in job.loras],
                                        job.num_inference_steps)
            if (job.edit is not None and self.editor is not None and not job.loras
                    and job.cfg_partner is None):  # otherwise an ordinary (exact) request
                self.engine.compute.run(submit_edit, self.engine, self.editor, job, controls)
            else:
                self.engine.submit(job, controls, loras, bound, self._partner(job, context))
        except Exception:
            controls.close()
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

    def CfgPass(self, requests: Iterator[denoiser_pb2.CfgPassRequest],
                context: grpc.ServicerContext) -> Iterator[denoiser_pb2.CfgPassResponse]:
        first = next(requests, None)
        if first is None or first.WhichOneof("message") != "open":
            raise InvalidArgument("the first message must be open", field="open")
        rid, opening = first.request_id, first.open
        embeds = self._load(opening.prompt_embeds, "open.prompt_embeds")
        if embeds is None:
            raise InvalidArgument("prompt embeddings are required", field="open.prompt_embeds")
        self.engine.load_unet(opening.model)
        loras = [LoraSpec(lo.name, lo.scale, lo.address) for lo in opening.loras]
        patch = tuple(sorted((spec.name, spec.scale) for spec in loras))
        controls = ControlNetSet([], opening.total_steps, opening.stale_controlnet)
        controls.links = self._links(rid, self._controlnet_specs(opening.controlnets), embeds,
                                     context)
        loaded = (self.engine.checked_loras(opening.model, self.loader.load(loras, rid))
                  if loras else None)
        work = PassWork(rid, opening.model, embeds, controls, patch, loaded,
                        opening.total_steps)
        context.add_callback(work.cancelled.set)
        context.add_callback(self.engine.wake)
        self.engine.add(work)
        requester_done = threading.Event()
        threading.Thread(target=self._read_pass, args=(requests, work, requester_done),
                         daemon=True, name=f"cfg-pass-{rid}").start()
        export = self.runtime.exporter.export
        try:
            while True:
                try:
                    answer = work.answers.get(timeout=EVENT_POLL_S)
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
                yield denoiser_pb2.CfgPassResponse(
                    step=answer.step, release_lease_ids=answer.lease_ids,
                    noise_pred=export(answer.noise, opening.peer, request_id=rid))
        finally:
            self.runtime.exporter.release_request(rid)

    def _read_pass(self, requests: Iterator[denoiser_pb2.CfgPassRequest],
                   work: PassWork, done: threading.Event) -> None:
        try:
            self._read_steps(requests, work)
        finally:
            done.set()

    def _read_steps(self, requests: Iterator[denoiser_pb2.CfgPassRequest],
                    work: PassWork) -> None:
        try:
            for message in requests:
                step = message.step
                work.push(PassStep(
                    step=step.step,
                    sample=self.runtime.importer.load(step.sample, release=False),
                    timestep=torch.tensor(step.timestep, dtype=torch.float64),
                    controlnet_scales=list(step.controlnet_scales),
                    with_loras=step.with_loras,
                    lease_ids=[step.sample.lease.lease_id] if step.sample.lease.lease_id else []))
                self.runtime.exporter.release(step.release_lease_ids)
                self.engine.wake()
        except grpc.RpcError:
            pass
        work.cancelled.set()
        self.engine.wake()

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
                    latents=export(event.latents.cpu(), request.peer, request_id=job.request_id),
                    steps=event.steps, queue_ms=event.queue_ms, run_ms=event.run_ms,
                    batch_peak=event.batch_peak, lora_joined_step=event.lora_step or 0,
                    controlnet_wait_ms=event.controlnet_wait_ms,
                    cache_bytes=job.edit.cache_bytes if job.edit is not None else 0,
                    edit_mode=job.edit.mode if job.edit is not None else ""))
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

    def _controlnet_specs(self, attachments: object) -> list[ControlNetSpec]:
        specs = []
        for c in attachments:  # type: ignore[attr-defined]
            image = self._load(c.cond_image, "controlnets.cond_image")
            if image is None:
                raise InvalidArgument("a control image is required", field="controlnets.cond_image")
            specs.append(ControlNetSpec(name=c.name, address=c.address, peer=c.peer,
                                        cond_image=image, scale=c.scale,
                                        guidance_start=c.guidance_start,
                                        guidance_end=c.guidance_end or 1.0))
        return specs

    def _job(self, request: denoiser_pb2.DenoiseRequest,
             context: grpc.ServicerContext) -> DenoiseJob:
        if not request.request_id:
            raise InvalidArgument("request_id is required", field="request_id")
        if request.num_inference_steps < 1:
            raise InvalidArgument("must be at least 1", field="num_inference_steps")
        if request.lora_async_steps < -1:
            raise InvalidArgument("must be -1 (profile), 0 (exact) or a step bound",
                                  field="lora_async_steps")
        embeds = self._load(request.prompt_embeds, "prompt_embeds")
        if embeds is None:
            raise InvalidArgument("prompt embeddings are required", field="prompt_embeds")
        negative = self._load(request.negative_prompt_embeds, "negative_prompt_embeds")
        if request.guidance_scale > 1.0 and negative is None:
            raise InvalidArgument("needed when guidance_scale > 1", field="negative_prompt_embeds")
        remaining = time_left(context)
        partner = (CfgPartnerSpec(request.cfg_partner.address, request.cfg_partner.peer)
                   if request.cfg_partner.address and request.guidance_scale > 1.0 else None)
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
            controlnets=self._controlnet_specs(request.controlnets),
            loras=[LoraSpec(lo.name, lo.scale, lo.address) for lo in request.loras],
            preview_every=request.preview_every,
            deadline=(time.monotonic() + remaining) if remaining is not None else None,
            lora_async_steps=request.lora_async_steps,
            stale_controlnet=request.stale_controlnet, cfg_partner=partner,
            edit=self._template_edit(request))

    def _template_edit(self, request: denoiser_pb2.DenoiseRequest) -> TemplateEdit | None:
        if not request.HasField("template_edit"):
            return None
        spec = request.template_edit
        if not spec.template_id:
            raise InvalidArgument("a template edit names its template",
                                  field="template_edit.template_id")
        return TemplateEdit(
            spec.template_id, activation_cache=spec.activation_cache, record=spec.record,
            prompt_embeds=self._load(spec.prompt_embeds, "template_edit.prompt_embeds"),
            negative_prompt_embeds=self._load(spec.negative_prompt_embeds,
                                              "template_edit.negative_prompt_embeds"),
            image_moments=self._load(spec.image_moments, "template_edit.image_moments"))

    def _links(self, request_id: str, specs: list[ControlNetSpec], rows: torch.Tensor,
               context: grpc.ServicerContext) -> list[StepLink]:
        """One stream per ControlNet, for ``rows`` (prompt embeddings, in batch order)."""
        links: list[StepLink] = []
        try:
            for spec in specs:
                image = torch.cat([spec.cond_image] * rows.shape[0])
                links.append(ControlNetLink(
                    self.runtime.channels, spec.address, request_id, spec.name, image, rows,
                    self.runtime.exporter, self.runtime.importer, spec.peer, local_peer(),
                    time_left(context)))
        except Exception:
            for link in links:
                link.close()
            raise
        return links

    def _partner(self, job: DenoiseJob, context: grpc.ServicerContext
                 ) -> Callable[[RequestState], CfgPartner] | None:
        spec = job.cfg_partner
        if spec is None:
            return None
        export = self.runtime.exporter.export
        rid = job.request_id

        def open_pass(state: RequestState) -> CfgPartner:
            assert job.negative_prompt_embeds is not None
            opening = denoiser_pb2.CfgPassOpen(
                model=job.model, peer=local_peer(), stale_controlnet=job.stale_controlnet,
                total_steps=len(state.timesteps),
                prompt_embeds=export(job.negative_prompt_embeds, spec.peer, request_id=rid),
                controlnets=[denoiser_pb2.ControlNetAttachment(
                    name=c.name, address=c.address, peer=c.peer, scale=c.scale,
                    guidance_start=c.guidance_start, guidance_end=c.guidance_end,
                    cond_image=export(c.cond_image, spec.peer, request_id=rid))
                    for c in job.controlnets],
                loras=[denoiser_pb2.LoraAttachment(name=lo.name, scale=lo.scale,
                                                   address=lo.address) for lo in job.loras])
            return CfgPartnerLink(self.runtime.channels, spec.address, spec.peer, rid, opening,
                                  self.runtime.exporter, self.runtime.importer,
                                  time_left(context), self.engine.wake)
        return open_pass
