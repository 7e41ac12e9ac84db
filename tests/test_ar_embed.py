"""The AR embed role (a real service process of the fleet) and AR workflows.

The service's image-token embeddings and its adapter's output equal the same computation run
in process here from the model folder with transformers' own classes (a causal LM whose inputs
after the prompt are the learned prefill embeddings, the hidden state before each image
position through the vision head; the adapter's Linear, LayerNorm, ReLU, Linear, LayerNorm).
A registered workflow whose denoise node reads the adapter's output in place of the prompt
embeddings returns an image of the requested size through real processes, equal to a
diffusers pipeline given those embeddings (max |difference| <= 1e-5); so does the built-in
``ar_t2i`` (the Flux decoder), against FluxPipeline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import dfleet
from dfleet.events import decode_tensor
from diffusion.v1 import ar_embed_pb2, ar_embed_pb2_grpc, tensor_pb2, workflow_pb2
from tests.diffusers_reference import LOAD

TOLERANCE = 1e-5
ELSEWHERE = tensor_pb2.PeerInfo(host_id="another-host")   # tensors come back inline


def reference_embeddings(models: Path, prompt: str) -> torch.Tensor:
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    folder = models / "ar" / "tiny-ar"
    lm = Qwen2ForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    head = load_file(str(folder / "image_head.safetensors"))
    template = json.loads((folder / "ar_config.json").read_text())["prompt_template"]
    ids = tokenizer(template.replace("{prompt}", prompt), return_tensors="pt").input_ids
    prefill = head["image_prefill_embeds.weight"]
    with torch.no_grad():
        sequence = torch.cat([lm.model.embed_tokens(ids), prefill[None]], dim=1)
        hidden = lm.model(inputs_embeds=sequence).last_hidden_state
        before_each = hidden[:, ids.shape[1] - 1: ids.shape[1] - 1 + prefill.shape[0]]
        return before_each @ head["vision_head.weight"].T + head["vision_head.bias"]


def reference_adapter(models: Path, embeddings: torch.Tensor) -> torch.Tensor:
    folder = models / "embed_adapters" / "tiny-embed-adapter"
    config = json.loads((folder / "config.json").read_text())
    width_in, width_out = config["in_features"], config["out_features"]
    adapter = torch.nn.Sequential(torch.nn.Linear(width_in, width_out),
                                  torch.nn.LayerNorm(width_out), torch.nn.ReLU(),
                                  torch.nn.Linear(width_out, width_out),
                                  torch.nn.LayerNorm(width_out))
    adapter.load_state_dict(load_file(str(folder / "model.safetensors")))
    with torch.no_grad():
        return adapter(embeddings)


def _stub(fleet: Any) -> ar_embed_pb2_grpc.ArEmbedStub:
    address = next(s.address for s in fleet.services if s.role == "ar_embed")
    return ar_embed_pb2_grpc.ArEmbedStub(grpc.insecure_channel(address))


def test_the_service_equals_the_computation_in_process(fleet: Any, tiny_models: Path) -> None:
    stub = _stub(fleet)
    reply = stub.Embed(ar_embed_pb2.ArEmbedRequest(request_id="ar-1", model="tiny-ar",
                                                   prompt="a red fox", peer=ELSEWHERE),
                       timeout=120)
    embeddings = torch.from_numpy(decode_tensor(reply.embeddings))
    expected = reference_embeddings(tiny_models, "a red fox")
    assert embeddings.shape == (1, 81, 48)
    assert (embeddings - expected).abs().max() <= TOLERANCE
    other = decode_tensor(stub.Embed(ar_embed_pb2.ArEmbedRequest(
        request_id="ar-2", model="tiny-ar", prompt="a blue whale", peer=ELSEWHERE),
        timeout=120).embeddings)
    assert np.abs(other - embeddings.numpy()).max() > 1e-3      # the prompt matters
    adapted = stub.Adapt(ar_embed_pb2.EmbedAdaptRequest(
        request_id="ar-3", adapter="tiny-embed-adapter", peer=ELSEWHERE,
        embeddings=tensor_pb2.TensorRef(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[1, 81, 48],
                                        inline=expected.numpy().tobytes())), timeout=120)
    assert (torch.from_numpy(decode_tensor(adapted.embeddings))
            - reference_adapter(tiny_models, expected)).abs().max() <= TOLERANCE


def test_the_service_refuses_what_does_not_fit(fleet: Any) -> None:
    stub = _stub(fleet)
    with pytest.raises(grpc.RpcError) as unknown:
        stub.Embed(ar_embed_pb2.ArEmbedRequest(request_id="ar-4", model="nope", prompt="x"),
                   timeout=60)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as wide:
        stub.Adapt(ar_embed_pb2.EmbedAdaptRequest(
            request_id="ar-5", adapter="tiny-embed-adapter-64", embeddings=tensor_pb2.TensorRef(
                dtype=tensor_pb2.DTYPE_FLOAT32, shape=[1, 2, 48],
                inline=np.zeros((1, 2, 48), "float32").tobytes())), timeout=60)
    assert wide.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "embeddings" in wide.value.details()


def ar_workflow() -> dfleet.Workflow:
    """AR embeddings, adapted, in place of an SD1.5 model's prompt embeddings."""
    wf = dfleet.Workflow("ar-sd")
    embeddings = wf.ar_embed("tiny-ar", wf.input("prompt", "text"), id="ar")
    conditioning = wf.embed_adapter("tiny-embed-adapter", embeddings, id="adapt")
    latent = wf.latent_init(wf.input("width", "int", default=0),
                            wf.input("height", "int", default=0), id="noise")
    latents = wf.denoise("tiny-sd", conditioning, None, latent, guidance_scale=1.0, steps=6,
                         seed=wf.input("seed", "int", default=0), id="denoise")
    wf.output("image", wf.vae_decode("tiny-sd", latents, id="decode"))
    return wf


def test_an_ar_workflow_renders_through_real_processes(fleet: Any, tiny_models: Path) -> None:
    import diffusers

    with dfleet.Client(fleet.gateway_address, timeout=180) as client:
        workflow_id = client.register_workflow(ar_workflow())
        result = client.generate(workflow=workflow_id, return_pixels=True, inputs={
            "prompt": "a lighthouse", "width": 96, "height": 64, "seed": 9})
    assert result.image.size == (96, 64)
    embeds = reference_adapter(tiny_models, reference_embeddings(tiny_models, "a lighthouse"))
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_models / "tiny-sd", **LOAD)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        expected = pipe(prompt_embeds=embeds, guidance_scale=1.0, num_inference_steps=6,
                        width=96, height=64, generator=torch.Generator().manual_seed(9),
                        output_type="np").images[0]
    assert result.pixels is not None
    assert np.abs(result.pixels - expected).max() <= TOLERANCE


def test_the_builtin_ar_t2i_renders_through_flux(fleet: Any, tiny_models: Path) -> None:
    """The built-in: the AR model's embeddings, adapted, in place of the Flux decoder's T5
    embeddings, the pooled CLIP embeddings from an empty prompt, Flux's distilled guidance;
    equal to FluxPipeline given the same embeddings."""
    import diffusers

    with dfleet.Client(fleet.gateway_address, timeout=180) as client:
        shown = client.get_workflow("ar_t2i")
        result = client.generate(workflow="ar_t2i", return_pixels=True, inputs={
            "prompt": "a lighthouse", "width": 96, "height": 64, "seed": 9, "steps": 6})
    assert shown.builtin and result.metadata["workflow_id"] == shown.workflow_id
    nodes = {n.id: n for n in shown.spec.nodes}
    assert nodes["ar"].operator == workflow_pb2.OPERATOR_AR_EMBED
    assert nodes["denoise"].model == "tiny-flux-dev"
    assert result.image.size == (96, 64)
    pipe = diffusers.FluxPipeline.from_pretrained(tiny_models / "tiny-flux-dev",
                                                  local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    embeds = reference_adapter(tiny_models, reference_embeddings(tiny_models, "a lighthouse"))
    with torch.no_grad():
        _, pooled, _ = pipe.encode_prompt(prompt="", prompt_2="")
        expected = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, guidance_scale=3.5,
                        num_inference_steps=6, width=96, height=64,
                        generator=torch.Generator().manual_seed(9), output_type="np").images[0]
    assert result.pixels is not None
    assert np.abs(result.pixels - expected).max() <= TOLERANCE
