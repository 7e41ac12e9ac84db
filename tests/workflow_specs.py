"""Workflow specs the workflow tests share, built with the SDK's builder."""

from __future__ import annotations

import dfleet
from dfleet.workflow import Output, Workflow


def txt2img(name: str = "my-txt2img", model: str = "tiny-sd") -> Workflow:
    """A text-to-image graph with every denoise input a workflow input."""
    wf = Workflow(name, "text to image, registered by a test")
    positive = wf.text_encode(model, wf.input("prompt", "text"), id="positive")
    negative = wf.text_encode(model, wf.input("negative", "text", default=""), mode="negative",
                              id="negative")
    latent = wf.latent_init(wf.input("width", "int", default=64),
                            wf.input("height", "int", default=64), id="noise")
    latents = _denoise(wf, model, positive, negative, latent)
    wf.output("picture", wf.vae_decode(model, latents, id="decode"))
    return wf


def _denoise(wf: Workflow, model: str, positive: Output, negative: Output, latent: Output,
             **adapters: object) -> Output:
    return wf.denoise(model, positive, negative, latent, seed=wf.input("seed", "int", default=0),
                      steps=wf.input("steps", "int", default=20),
                      guidance_scale=wf.input("guidance", "float", default=7.5),
                      id="denoise", **adapters)  # type: ignore[arg-type]


def controlled(name: str = "two-cn-ip-lora", lora: bool = True, ip_adapter: bool = True
               ) -> Workflow:
    """Two ControlNets with their own step windows, an IP-Adapter and a LoRA (UNet and
    text-encoder layers) with separate denoiser and text-encoder strengths."""
    wf = Workflow(name)
    positive = wf.text_encode("tiny-sd", wf.input("prompt", "text"), id="positive")
    negative = wf.text_encode("tiny-sd", "", mode="negative", id="negative")
    latent = wf.latent_init(64, 64, id="noise")
    adapters: dict[str, object] = {"controlnets": [
        dfleet.WorkflowControlNet("tiny-cn-a", wf.input("edges", "image"), scale=0.7,
                                  guidance_start=0.0, guidance_end=0.6),
        dfleet.WorkflowControlNet("tiny-cn-b", wf.input("depth", "image"), scale=1.2,
                                  guidance_start=0.3, guidance_end=1.0)]}
    if ip_adapter:
        embeds = wf.image_encode("tiny-ip-adapter", wf.input("face", "image"), id="face")
        adapters["ip_adapters"] = [dfleet.WorkflowIpAdapter("tiny-ip-adapter", embeds, 0.6)]
    if lora:
        adapters["loras"] = [dfleet.WorkflowLora("tiny-lora-kohya", scale=0.8,
                                                 text_encoder_scale=0.3)]
    latents = _denoise(wf, "tiny-sd", positive, negative, latent, **adapters)
    wf.output("image", wf.vae_decode("tiny-sd", latents, id="decode"))
    return wf
