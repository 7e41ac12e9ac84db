"""A Flux ControlNet's step stream against a real ControlNet service process: both residual
lists (the joint blocks' and the single blocks' samples) come back through the step ring and
through gRPC messages alike, equal to the model run in this process with the same inputs (the
rows' pooled embeddings and guidance, and the position ids every row shares, sent at the
stream's open)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FluxControlNetModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

from services.common.controlnet_calls import residuals
from services.common.transport import local_peer
from services.denoiser.controlnet_link import ControlNetLink
from tests.test_controlnet_ring import DenoiserSide, controlnet_process
from tests.test_controlnet_ring import denoiser_side as denoiser_side  # noqa: F401 - fixture


def test_flux_residuals_through_ring_and_grpc(tiny_models: Path,
                                              denoiser_side: DenoiserSide) -> None:  # noqa: F811
    g = torch.Generator().manual_seed(4)
    rows, tokens, text = 2, 4, 16
    latents, cond = torch.randn(rows, tokens, 64, generator=g), torch.randn(rows, tokens, 64,
                                                                           generator=g)
    embeds = torch.randn(rows, text, 32, generator=g)
    added = {"pooled_projections": torch.randn(rows, 32, generator=g),
             "guidance": torch.full([rows], 3.5)}
    shared = {"img_ids": FluxPipeline._prepare_latent_image_ids(rows, 2, 2, "cpu",
                                                                torch.float32),
              "txt_ids": torch.zeros(text, 3)}
    t = torch.tensor(801.0, dtype=torch.float64)
    model = FluxControlNetModel.from_pretrained(tiny_models / "controlnets" / "tiny-flux-cn",
                                                local_files_only=True).eval()
    with torch.inference_mode():
        joint, single = residuals(model, latents, t, embeds, cond, 0.8, added, shared)
    expected = torch.cat([x.flatten() for x in (*joint, *single)])
    assert len(joint) == 1 and len(single) == 1 and expected.abs().max() > 0
    side = denoiser_side
    with controlnet_process(tiny_models) as on:
        for ring in (True, False):
            link = ControlNetLink(side.channels, on.address, f"flux-{ring}", "tiny-flux-cn",
                                  cond, embeds, side.exporter, side.importer, local_peer(),
                                  local_peer(), 600.0, ring=ring, added_cond=added,
                                  shared=shared)
            assert (link._ring is not None) == ring
            try:
                link.send(0, latents, t, 0.8)
                got_joint, got_single = link.receive()
            finally:
                link.close()
            assert (len(got_joint), len(got_single)) == (1, 1)
            got = torch.cat([x.flatten() for x in (*got_joint, *got_single)])
            assert (got - expected).abs().max().item() <= 1e-5, ring
