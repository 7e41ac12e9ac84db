"""Runs a workflow's nodes around its denoise node, for the request flow.

The request flow (:mod:`services.gateway.request_flow`) places the request, runs the denoise
node with its attachments and handles failover; this module runs the graph's other nodes:
those the denoise node waits for (:meth:`Executor.before_denoise`, in dependency order,
independent ones at once, text encodes of one model in one call) and those after it
(:meth:`Executor.after_denoise`). Each node goes to a replica of its (role, model):
:class:`NodeReplicas`. A tensor a node makes is exported for the replica that reads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffusion.v1 import (
    ar_embed_pb2,
    ar_embed_pb2_grpc,
    denoiser_pb2,
    tensor_pb2,
    text_encoder_pb2,
    text_encoder_pb2_grpc,
    vae_pb2,
    vae_pb2_grpc,
)
from services.common.fleet_state import ReplicaInfo
from services.common.telemetry.tracing import ContextThreadPool
from services.common.transport import local_peer
from services.gateway import images
from services.gateway.depth import DepthTracker
from services.gateway.generation import Generation
from services.gateway.node_calls import NodeCalls
from services.gateway.placement import Placement, peer_of
from services.gateway.workflows import catalog
from services.gateway.workflows.graph import before_denoise, order, readers
from services.gateway.workflows.node_costs import NodeCosts
from services.gateway.workflows.plan import Plan
from services.gateway.workflows.spec import FromNode, Node, Operator

MAX_PARALLEL_NODES = 8
Values = dict[tuple[str, str], Any]


@dataclass(frozen=True)
class LatentStart:
    """What a denoise node starts from: noise (nothing here), or an encoded image."""

    image_moments: tensor_pb2.TensorRef | None = None
    masked_image_moments: tensor_pb2.TensorRef | None = None


@dataclass
class DenoiseInputs:
    prompts: list[tensor_pb2.Conditioning]          # the positive, then the negative
    image_moments: tensor_pb2.TensorRef | None = None
    masked_image_moments: tensor_pb2.TensorRef | None = None


@dataclass
class NodeReplicas:
    """The replica of each (role, model) one attempt uses."""

    place: Placement
    model: str
    others: dict[tuple[str, str], ReplicaInfo] = field(default_factory=dict)

    def get(self, role: str, model: str) -> ReplicaInfo:
        base = {"text_encoder": self.place.text_encoder, "vae": self.place.vae,
                "denoiser": self.place.denoiser}
        if model == self.model and role in base:
            return base[role]
        return self.others[(role, model)]

    def replicas(self) -> list[ReplicaInfo]:
        return self.place.replicas() + list(self.others.values())


def run_nodes(gen: Generation) -> list[Node]:
    """The nodes this run computes here, in dependency order (image encodes run with the
    IP-Adapter attachment, the denoise node in the request flow)."""
    plan = _plan(gen)
    return [n for n in order(plan.registered.workflow) if n.id not in plan.skipped
            and n.operator not in (Operator.IMAGE_ENCODE, Operator.DENOISE)]


def other_nodes(gen: Generation) -> list[tuple[str, str]]:
    """The (role, model) pairs the run needs besides its model's text encoder, denoiser, VAE."""
    found = []
    for node in run_nodes(gen):
        role = catalog.OPERATORS[node.operator].role
        key = (role, node.model)
        if role and not (node.model == gen.model and role in ("text_encoder", "vae")) \
                and key not in found:
            found.append(key)
    return found


def early_depth(gen: Generation) -> list[tuple[str, str]]:
    """The nodes held in the queue depth from placement until the denoise node can start
    (the VAE is counted only while it works)."""
    before = before_denoise(_plan(gen).registered.workflow)
    found = []
    for node in run_nodes(gen):
        role = catalog.OPERATORS[node.operator].role
        if node.id in before and role in ("text_encoder", "ar_embed") \
                and (role, node.model) not in found:
            found.append((role, node.model))
    return found


def _plan(gen: Generation) -> Plan:
    assert gen.plan is not None, "every request runs a workflow"
    return gen.plan


class Executor:
    def __init__(self, costs: NodeCosts, inline_max_bytes: int) -> None:
        self.costs = costs
        self.inline_max_bytes = inline_max_bytes

    def before_denoise(self, gen: Generation, replicas: NodeReplicas, calls: NodeCalls,
                       depth: DepthTracker) -> DenoiseInputs:
        workflow = _plan(gen).registered.workflow
        before = before_denoise(workflow)
        todo = [n for n in run_nodes(gen) if n.id in before]
        here = {n.id for n in todo}
        values: Values = {}
        done: set[str] = set()
        with ContextThreadPool(MAX_PARALLEL_NODES, thread_name_prefix="node") as pool:
            running: dict[Future[Values], list[Node]] = {}
            try:
                while todo or running:
                    ready = [n for n in todo if (n.upstream() & here) <= done]
                    for batch in _batches(ready):
                        running[pool.submit(self._run, batch, gen, replicas, calls, depth,
                                            dict(values))] = batch
                    todo = [n for n in todo if n not in ready]
                    finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for future in finished:
                        done.update(n.id for n in running.pop(future))
                        values.update(future.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return self._denoise_inputs(gen, values)

    def after_denoise(self, gen: Generation, replicas: NodeReplicas,
                      result: denoiser_pb2.DenoiseResult, calls: NodeCalls,
                      depth: DepthTracker) -> list[tuple[str, list[np.ndarray]]]:
        """Each workflow output with its images."""
        workflow = _plan(gen).registered.workflow
        before = before_denoise(workflow)
        values: Values = {(workflow.denoise_node().id, "latents"): result.latents}
        for node in run_nodes(gen):
            if node.id not in before:
                values.update(self._run([node], gen, replicas, calls, depth, values))
        return [(out.name, values[(out.source.node, out.source.output)])
                for out in workflow.outputs]

    def _denoise_inputs(self, gen: Generation, values: Values) -> DenoiseInputs:
        denoise = _plan(gen).registered.workflow.denoise_node()

        def read(port: str) -> Any:
            binding = denoise.inputs[port]
            assert isinstance(binding, FromNode)
            return values[(binding.node, binding.output)]
        latent: LatentStart = read("latent")
        prompts = [read("positive")] + ([read("negative")] if gen.do_cfg else [])
        return DenoiseInputs(prompts, latent.image_moments, latent.masked_image_moments)

    def _run(self, batch: list[Node], gen: Generation, replicas: NodeReplicas,
             calls: NodeCalls, depth: DepthTracker, values: Values) -> Values:
        started = time.perf_counter()
        node = batch[0]
        runner: dict[Operator, Callable[..., Values]] = {
            Operator.TEXT_ENCODE: self._text_encode, Operator.VAE_ENCODE: self._vae_encode,
            Operator.VAE_DECODE: self._vae_decode, Operator.LATENT_INIT: _latent_init,
            Operator.AR_EMBED: self._ar_embed, Operator.EMBED_ADAPTER: self._adapt}
        made = runner[node.operator](batch, gen, replicas, calls, depth, values)
        self.costs.observe(node.operator, node.model, (time.perf_counter() - started) * 1e3)
        return made

    def _peer(self, replica: ReplicaInfo) -> tensor_pb2.PeerInfo:
        return peer_of(replica, self.inline_max_bytes)

    def _text_encode(self, batch: list[Node], gen: Generation, replicas: NodeReplicas,
                     calls: NodeCalls, depth: DepthTracker, values: Values) -> Values:
        model = batch[0].model
        texts = [_plan(gen).texts[n.id] for n in batch]
        stub = text_encoder_pb2_grpc.TextEncoderStub(
            calls.channel(replicas.get("text_encoder", model)))
        request = text_encoder_pb2.EncodeRequest(
            request_id=gen.request_id, model=model, peer=self._peer(replicas.place.denoiser),
            inputs=[text_encoder_pb2.PromptInput(text=t.text, zeros=t.zeros) for t in texts])
        for attachment in gen.attachments:
            attachment.encode(request)     # the LoRAs' text-encoder layers
        reply = calls.unary("text_encoder", stub.Encode, request)
        return {(n.id, "conditioning"): c for n, c in zip(batch, reply.prompts, strict=True)}

    def _vae_encode(self, batch: list[Node], gen: Generation, replicas: NodeReplicas,
                    calls: NodeCalls, depth: DepthTracker, values: Values) -> Values:
        node = batch[0]
        prepared = _plan(gen).images[node.id]
        replica = replicas.get("vae", node.model)
        stub = vae_pb2_grpc.VaeStub(calls.channel(replica))

        def moments(image: Any) -> tensor_pb2.TensorRef | None:
            if image is None:
                return None
            with depth.holding([("vae", node.model)]):
                encoded = calls.unary("vae", stub.Encode, vae_pb2.VaeEncodeRequest(
                    request_id=gen.request_id, model=node.model,
                    peer=self._peer(replicas.place.denoiser),
                    image=calls.exporter.export(image, self._peer(replica),
                                                request_id=gen.request_id)))
            ref: tensor_pb2.TensorRef = encoded.moments
            return ref
        return {(node.id, "latent"): LatentStart(moments(prepared.init),
                                                 moments(prepared.masked))}

    def _vae_decode(self, batch: list[Node], gen: Generation, replicas: NodeReplicas,
                    calls: NodeCalls, depth: DepthTracker, values: Values) -> Values:
        node = batch[0]
        latents = _input(values, node, "latents")
        stub = vae_pb2_grpc.VaeStub(calls.channel(replicas.get("vae", node.model)))
        with depth.holding([("vae", node.model)]):
            decoded = calls.unary("vae", stub.Decode, vae_pb2.VaeDecodeRequest(
                request_id=gen.request_id, model=node.model, latents=latents,
                peer=local_peer()))
        return {(node.id, "image"): images.to_pixel_list(calls.importer.load(decoded.image))}

    def _ar_embed(self, batch: list[Node], gen: Generation, replicas: NodeReplicas,
                  calls: NodeCalls, depth: DepthTracker, values: Values) -> Values:
        node = batch[0]
        workflow = _plan(gen).registered.workflow
        reader = readers(workflow)[(node.id, "embeddings")][0].split(".")[0]
        peer = self._peer(replicas.get("ar_embed", workflow.node(reader).model))
        stub = ar_embed_pb2_grpc.ArEmbedStub(calls.channel(replicas.get("ar_embed", node.model)))
        reply = calls.unary("ar_embed", stub.Embed, ar_embed_pb2.ArEmbedRequest(
            request_id=gen.request_id, model=node.model, prompt=_plan(gen).prompts[node.id],
            peer=peer))
        return {(node.id, "embeddings"): reply.embeddings}

    def _adapt(self, batch: list[Node], gen: Generation, replicas: NodeReplicas,
               calls: NodeCalls, depth: DepthTracker, values: Values) -> Values:
        """The adapter's output as the prompt embeddings, beside the pooled ones (if bound)."""
        node = batch[0]
        stub = ar_embed_pb2_grpc.ArEmbedStub(calls.channel(replicas.get("ar_embed", node.model)))
        reply = calls.unary("ar_embed", stub.Adapt, ar_embed_pb2.EmbedAdaptRequest(
            request_id=gen.request_id, adapter=node.model,
            embeddings=_input(values, node, "embeddings"),
            peer=self._peer(replicas.place.denoiser)))
        conditioning = tensor_pb2.Conditioning()
        if "pooled" in node.inputs:
            pooled: tensor_pb2.Conditioning = _input(values, node, "pooled")
            for key, ref in pooled.tensors.items():
                if key != "prompt_embeds":    # the unused one's lease ends with the request
                    conditioning.tensors[key].CopyFrom(ref)
        conditioning.tensors["prompt_embeds"].CopyFrom(reply.embeddings)
        return {(node.id, "conditioning"): conditioning}


def _latent_init(batch: list[Node], *args: Any) -> Values:
    return {(batch[0].id, "latent"): LatentStart()}


def _input(values: Values, node: Node, port: str) -> Any:
    binding = node.inputs[port]
    assert isinstance(binding, FromNode)
    return values[(binding.node, binding.output)]


def _batches(ready: list[Node]) -> list[list[Node]]:
    """Ready nodes as calls: the text encodes of one model together, the others alone."""
    batches: list[list[Node]] = []
    by_model: dict[str, list[Node]] = {}
    for node in ready:
        if node.operator == Operator.TEXT_ENCODE:
            if node.model not in by_model:
                by_model[node.model] = []
                batches.append(by_model[node.model])
            by_model[node.model].append(node)
        else:
            batches.append([node])
    return batches
