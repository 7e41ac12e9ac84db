"""The workflow runner's side of template edits: placement, what the denoiser gets, the ledger.

For an edit of a registered template the runner asks this module to pick
the denoiser (mask-aware, :mod:`services.gateway.edit_placement`), to attach
the template to the DenoiseRequest (its id, the activation-cache switch and
the template's encoded prompt and image, from which a denoiser without the
template's record records it), to move the edit's remaining work down as
steps complete, and at the end to learn from the measured step time and
note the template's cache size.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from diffusion.v1 import denoiser_pb2, tensor_pb2
from services.common.fleet_state import ReplicaInfo
from services.common.model_store import ModelStore
from services.common.transport import TensorExporter
from services.gateway.edit_placement import EditDemand, EditPlacer
from services.gateway.templates import Template, TemplateRegistry
from services.gateway.validation import Workflow

log = logging.getLogger("dfleet.gateway.edits")


def region_ratio(mask: torch.Tensor, vae_scale_factor: int, halo: int) -> float:
    """Fraction of latent tokens an edit computes: the mask's tokens dilated by ``halo``."""
    tokens = F.max_pool2d((mask > 0.5).float(), vae_scale_factor)
    if halo:
        tokens = F.max_pool2d(tokens, 2 * halo + 1, stride=1, padding=halo)
    return float(tokens.mean())


class EditDispatch:
    def __init__(self, registry: TemplateRegistry, placer: EditPlacer,
                 exporter: TensorExporter, store: ModelStore, halo: int = 1) -> None:
        self.registry = registry
        self.placer = placer
        self.exporter = exporter
        self.store = store
        self.halo = halo
        self._booked: dict[str, tuple[str, float, EditDemand]] = {}

    def demand(self, flow: Workflow, template: Template) -> EditDemand:
        assert flow.mask is not None
        warm = template.cache_bytes > 0
        cached = flow.activation_cache and warm
        vsf = 2 ** (len(self.store.vae_block_channels(flow.model)) - 1)
        return EditDemand(ratio=region_ratio(flow.mask, vsf, self.halo),
                          cached=cached, steps=flow.steps,
                          cache_bytes_per_step=template.cache_bytes / max(template.steps, 1)
                          if cached else 0.0)

    def place(self, flow: Workflow, replicas: list[ReplicaInfo]) -> ReplicaInfo:
        """Picks the edit's denoiser and books its predicted work there."""
        template = self.registry.get(flow.template_id)
        demand = self.demand(flow, template)
        cost = self.placer.costs.cost_ms(demand)
        if flow.activation_cache and not demand.cached:
            cost *= 2  # the template's recording run shares the edit's batch
        chosen = self.placer.reserve(replicas, flow.model, flow.request_id, cost)
        self._booked[flow.request_id] = (chosen.replica_id, cost, demand)
        return chosen

    def attach(self, flow: Workflow, request: denoiser_pb2.DenoiseRequest,
               peer: tensor_pb2.PeerInfo) -> None:
        template = self.registry.get(flow.template_id)
        rid = flow.request_id

        def export(t: torch.Tensor | None) -> tensor_pb2.TensorRef | None:
            return self.exporter.export(t, peer, request_id=rid) if t is not None else None

        request.template_edit.CopyFrom(denoiser_pb2.TemplateEditSpec(
            template_id=template.template_id, activation_cache=flow.activation_cache,
            prompt_embeds=export(template.prompt_embeds),
            negative_prompt_embeds=export(template.negative_prompt_embeds)
            if flow.do_cfg else None,
            image_moments=export(template.image_moments)))

    def progress(self, flow: Workflow, step: int, total: int) -> None:
        booked = self._booked.get(flow.request_id)
        if booked is not None and total:
            replica_id, cost, _ = booked
            self.placer.ledger.set(replica_id, flow.request_id, cost * (1 - step / total))

    def result(self, flow: Workflow, result: denoiser_pb2.DenoiseResult) -> dict[str, str]:
        """Learns from a finished edit; the metadata it adds to the result."""
        booked = self._booked.get(flow.request_id)
        if result.cache_bytes and result.edit_mode in ("record", "exact"):
            self.registry.set_cache_bytes(flow.template_id, result.cache_bytes)
        if booked is not None and result.batch_peak == 1 and result.steps:
            _, _, demand = booked
            measured = EditDemand(demand.ratio, result.edit_mode == "cached", demand.steps,
                                  demand.cache_bytes_per_step)
            self.placer.costs.observe(measured, result.run_ms / result.steps)
        return {"template_id": flow.template_id, "edit_mode": result.edit_mode,
                "cache_bytes": str(result.cache_bytes),
                "edit_region_ratio": f"{booked[2].ratio:.4f}" if booked else ""}

    def release(self, flow: Workflow) -> None:
        booked = self._booked.pop(flow.request_id, None)
        if booked is not None:
            self.placer.ledger.remove(booked[0], flow.request_id)
