"""One request through the fleet: place -> the workflow's nodes -> denoise -> the rest.

Every request runs a workflow (a plain one, the built-in workflow of its kind): its nodes
before the denoise node (text encodes, VAE encodes, AR embeddings, ...) and after it (the
VAE decode) run in :mod:`services.gateway.workflows.executor`; this module places the
request, runs the denoise node with its attachments and re-places the request when a
replica dies. Tensors flow between the node services directly: the gateway passes along the
references each producer returns (the producer exported them for the peer that will read
them), and reads only the final images itself. What is attached to the denoise node (LoRAs,
ControlNets, a CFG partner, a template edit, previews) takes part through its attachment
(:mod:`services.gateway.attachments`); this module knows none of them by name.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from diffusion.v1 import denoiser_pb2, denoiser_pb2_grpc, gateway_pb2, tensor_pb2, tensor_pb2_grpc
from services.common.channels import ChannelPool
from services.common.errors import Cancelled, ResourceExhausted, Unavailable, from_rpc_error
from services.common.fleet_state import FleetState, ReplicaInfo
from services.common.transport import TensorExporter, TensorImporter
from services.gateway import images, tiers
from services.gateway.attachments.base import AttachContext
from services.gateway.cost_model import CostSettings, Estimate, check_budget
from services.gateway.depth import DepthTracker
from services.gateway.failover import Failover, roles_of, unavailable
from services.gateway.generation import Generation
from services.gateway.node_calls import NodeCalls
from services.gateway.placement import Placement, Placer, peer_of
from services.gateway.workflows.executor import (
    DenoiseInputs,
    Executor,
    NodeReplicas,
    early_depth,
    other_nodes,
    run_nodes,
)
from services.gateway.workflows.node_costs import NodeCosts

log = logging.getLogger("dfleet.gateway")

Emit = Callable[[gateway_pb2.GenerateEvent], None]


@dataclass
class Outcome:
    pixels: list[np.ndarray]      # one float image [H, W, 3] per image
    pngs: list[bytes]
    metadata: dict[str, str]
    outputs: list[str]            # the workflow output each image is


class RequestFlow:
    """Stateless across requests; one instance per gateway process."""

    def __init__(self, fleet: FleetState, channels: ChannelPool, exporter: TensorExporter,
                 importer: TensorImporter, inline_max_bytes: int,
                 replica_wait_s: float = 30.0, costs: CostSettings | None = None) -> None:
        self.fleet = fleet
        self.placer = Placer(fleet, costs)
        self.channels = channels
        self.exporter = exporter
        self.importer = importer
        self.inline_max_bytes = inline_max_bytes
        self.replica_wait_s = replica_wait_s
        self.failover = Failover(channels)
        self.executor = Executor(NodeCosts(), inline_max_bytes)

    def run(self, gen: Generation, emit: Emit, deadline: float | None,
            is_cancelled: Callable[[], bool], depth: DepthTracker) -> Outcome:
        """Runs the request; when a replica it used dies, runs it again on live replicas
        (:mod:`services.gateway.failover`), from placement on: the same seed gives the same
        image."""
        started = time.monotonic()
        calls = NodeCalls(gen.request_id, deadline, self.channels, self.exporter,
                          self.importer, self.inline_max_bytes)
        replaced: list[ReplicaInfo] = []
        try:
            for attempt in range(1, self.failover.max_attempts + 1):
                placed: list[NodeReplicas] = []
                try:
                    outcome = self._attempt(gen, placed, calls, deadline, emit, is_cancelled,
                                            depth, started)
                    self.placer.step_times.observe(outcome.metadata)
                    if replaced:
                        outcome.metadata["re_placed"] = roles_of(replaced)
                    return outcome
                except Unavailable as exc:
                    used = self._used(gen, placed[0]) if placed else []
                    dead = ([] if is_cancelled() else
                            self.failover.replaceable(exc, used, attempt, deadline))
                    if not dead:
                        raise unavailable(exc, replaced) from exc
                    replaced += dead
                    log.warning("re-placing the request: %s replica %s died",
                                roles_of(dead), ", ".join(r.replica_id for r in dead),
                                extra={"request_id": gen.request_id})
                    for attachment in gen.attachments:
                        attachment.close()   # bookings are made again with the new placement
                finally:
                    if placed:
                        self._release(gen, placed[0])
            raise AssertionError("unreachable: the last attempt returns or raises")
        finally:
            for attachment in gen.attachments:
                attachment.close()

    def _attempt(self, gen: Generation, placed: list[NodeReplicas], calls: NodeCalls,
                 deadline: float | None, emit: Emit, is_cancelled: Callable[[], bool],
                 depth: DepthTracker, started: float) -> Outcome:
        """One run through the fleet; its placement is appended to ``placed`` (the caller
        releases it). Depth is held while placing: a node at zero replicas scales up."""
        denoiser = ("denoiser", gen.model)
        with depth.holding([denoiser, *(n for a in gen.attachments for n in a.nodes())]) as held:
            with depth.holding(early_depth(gen)):
                replicas = self._place(gen, deadline)
                placed.append(replicas)
                if gen.model != denoiser[1]:  # auto placed it on the slimmed tier: count it there
                    depth.move(held, denoiser, ("denoiser", gen.model))
                for attachment in gen.attachments:
                    attachment.start(calls)
                inputs = self.executor.before_denoise(gen, replicas, calls, depth)
            result = self._denoise(gen, replicas.place, inputs, calls, emit, is_cancelled)
        outputs = self.executor.after_denoise(gen, replicas, result, calls, depth)
        pixels = [image for _, images_of in outputs for image in images_of]
        metadata = self._metadata(gen, replicas.place, result, started)
        return Outcome(pixels, [images.to_png(p) for p in pixels], metadata,
                       [name for name, images_of in outputs for _ in images_of])

    def _used(self, gen: Generation, replicas: NodeReplicas) -> list[ReplicaInfo]:
        return replicas.replicas() + [r for a in gen.attachments for r in a.replicas()]

    def _wait_limit(self, deadline: float | None) -> float:
        """How long placement may wait for a replica to come up (scale from zero)."""
        limit = self.replica_wait_s
        if deadline is not None:
            limit = min(limit, deadline - time.monotonic())
        return max(0.0, limit)

    def _place(self, gen: Generation, deadline: float | None) -> NodeReplicas:
        """The denoiser by the cost model (or an attachment's choice), admission control on
        the whole graph's cost, then the other replicas near it."""
        wait_s = self._wait_limit(deadline)
        pixels = gen.width * gen.height * gen.num_images
        check_budget(pixels * gen.steps, self.placer.costs)
        def best(model: str) -> Estimate:
            return self.placer.best_denoiser(
                model, gen.steps, [n for a in gen.attachments for n in a.resident()],
                pixels * 4 * 2, wait_s, pixels=pixels)
        chosen = best(gen.model)
        graph_ms = self.executor.costs.graph_ms(run_nodes(gen))
        left = None if deadline is None else deadline - time.monotonic()
        if gen.slim_model and tiers.misses(chosen.total_ms + graph_ms, left):
            slim = best(gen.slim_model)   # quality auto: the slimmed tier, if it would make it
            if not tiers.misses(slim.total_ms + graph_ms, left):
                tiers.use_slim(gen, gen.slim_model)
                chosen = slim
        needed_s = (chosen.total_ms + graph_ms) / 1e3
        if deadline is not None and needed_s > deadline - time.monotonic():
            raise ResourceExhausted(
                f"cannot finish before the deadline: the best replica needs about "
                f"{needed_s:.1f} s ({chosen.wait_and_run_ms:.0f} ms "
                f"queue and run, {chosen.load_ms:.0f} ms loading, {graph_ms:.0f} ms for the "
                "workflow's other nodes); retry later or allow more time")
        denoiser = chosen.replica
        live = functools.cache(lambda: self.fleet.replicas("denoiser") or [chosen.replica])
        for attachment in gen.attachments:
            denoiser = attachment.choose_denoiser(live) or denoiser
        self.placer.assign(denoiser.replica_id)
        try:
            place = self.placer.place(gen.model, denoiser, wait_s)
            replicas = NodeReplicas(place, gen.model, {
                (role, model): self.placer.pick(role, model, denoiser.host_id, wait_s=wait_s)
                for role, model in other_nodes(gen)})
            for attachment in gen.attachments:
                attachment.place(self.placer, denoiser, wait_s)
        except BaseException:
            self.placer.unassign(denoiser.replica_id)
            raise
        return replicas

    def _denoise(self, gen: Generation, place: Placement, encoded: DenoiseInputs,
                 calls: NodeCalls, emit: Emit, is_cancelled: Callable[[], bool]
                 ) -> denoiser_pb2.DenoiseResult:
        rid = gen.request_id
        den_peer = peer_of(place.denoiser, self.inline_max_bytes)
        ctx = AttachContext(gen, calls, den_peer, place.vae)
        request = denoiser_pb2.DenoiseRequest(
            request_id=rid, model=gen.model, conditioning=encoded.prompts[0],
            negative_conditioning=encoded.prompts[1] if gen.do_cfg else None,
            width=gen.width, height=gen.height, num_inference_steps=gen.steps,
            guidance_scale=gen.guidance_scale, seed=gen.seed, strength=gen.strength,
            image_moments=encoded.image_moments,
            masked_image_moments=encoded.masked_image_moments,
            mask=self.exporter.export(gen.mask, den_peer, request_id=rid)
            if gen.mask is not None else None,
            scheduler=gen.scheduler, num_images=gen.num_images, priority=gen.priority,
            peer=peer_of(place.vae, self.inline_max_bytes))
        for attachment in gen.attachments:
            attachment.attach(request.addons, ctx)
        stub = denoiser_pb2_grpc.DenoiserStub(calls.channel(place.denoiser))
        call = stub.Denoise(request, timeout=calls.timeout(), metadata=calls.metadata())
        try:
            for event in call:
                if is_cancelled():
                    call.cancel()
                    break
                if event.HasField("result"):
                    result: denoiser_pb2.DenoiseResult = event.result
                    return result
                progress = gateway_pb2.Progress(step=event.progress.step,
                                                total_steps=event.progress.total_steps)
                for attachment in gen.attachments:
                    attachment.progress(event.progress, progress, ctx)
                emit(gateway_pb2.GenerateEvent(request_id=rid, progress=progress))
        except grpc.RpcError as err:
            if is_cancelled():
                raise Cancelled("request cancelled", field="request_id") from err
            raise from_rpc_error(err, "denoiser") from err
        raise Cancelled("request cancelled", field="request_id")

    def _metadata(self, gen: Generation, place: Placement, result: denoiser_pb2.DenoiseResult,
                  started: float) -> dict[str, str]:
        metadata = {
            "workflow": gen.kind, "model": gen.model, "tier": gen.tier, "seed": str(gen.seed),
            "steps": str(result.steps), "width": str(gen.width), "height": str(gen.height),
            "scheduler": gen.scheduler, "num_images": str(gen.num_images),
            "denoiser": place.denoiser.replica_id,
            "denoise_queue_ms": f"{result.queue_ms:.1f}", "denoise_run_ms": f"{result.run_ms:.1f}",
            "denoise_batch_peak": str(result.batch_peak), "priority": str(gen.priority),
            "total_ms": f"{(time.monotonic() - started) * 1e3:.1f}"}
        if gen.plan is not None:
            metadata["workflow_id"] = gen.plan.workflow_id
            metadata["workflow_name"] = gen.plan.registered.workflow.name
        reported = {**result.metadata, **metadata}
        for attachment in gen.attachments:
            metadata.update(attachment.report(reported))
        return metadata

    def _release(self, gen: Generation, replicas: NodeReplicas) -> None:
        """No lease outlives its request: every producer frees what is left of it."""
        self.placer.unassign(replicas.place.denoiser.replica_id)
        self.exporter.release_request(gen.request_id)
        self.release_leases(gen.request_id, self._used(gen, replicas))

    def release_leases(self, request_id: str, replicas: list[ReplicaInfo]) -> None:
        for replica in {r.address: r for r in replicas}.values():
            stub = tensor_pb2_grpc.TensorLeasesStub(self.channels.get(replica.address))
            try:
                stub.Release.future(tensor_pb2.ReleaseRequest(request_id=request_id), timeout=5)
            except Exception:  # noqa: BLE001 - leases expire anyway
                log.warning("release failed", exc_info=True, extra={"request_id": request_id})
