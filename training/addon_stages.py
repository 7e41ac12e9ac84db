"""Stages 5 and 6: a ControlNet on edge maps, and the style LoRAs, on the frozen UNet.

The ControlNet is diffusers' ``ControlNetModel.from_unet`` of the trained
UNet (its output convolutions start at zero, so it starts as a no-op), with a
small conditioning embedding; its condition is the shape's outline, white on
black (:func:`training.shapes.edge_map`), and its captions leave out the
position and size more often, which the edges give.

Each LoRA (rank 4 on the attention, feed-forward and ResNet convolutions)
learns one drawing style, "outlined" or "striped", from images of that style;
half its captions name the style, so the LoRA draws it whether or not the
prompt asks. Saved with diffusers' LoRA writer, in the peft key style the
fleet's LoRA cache and diffusers' ``load_lora_weights`` both read.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from training import architecture, shapes
from training.diffusion_data import Frozen, noise_loss
from training.loop import Stage, StageSpec, stage_generator
from training.unet_stage import load_unet

CONDITIONING_CHANNELS = (16, 32, 48, 64)  # the first blocks: one halving per VAE halving
CONTROLNET_CAPTION_DROP = 0.6
LORA_RANK = 4
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
                "ff.net.2", "conv1", "conv2"]


def edge_batch(scenes: list[shapes.Scene], side: int) -> torch.Tensor:
    """Conditions in [0, 1], as diffusers' ControlNet pipelines prepare them."""
    return (shapes.to_tensor_batch([shapes.edge_map(s, side) for s in scenes]) + 1) / 2


def train_controlnet(work: Path, frozen: Frozen, seed: int, steps: int, batch: int = 32,
                     quiet: bool = False) -> Stage:
    from diffusers import ControlNetModel

    unet = load_unet(work)
    unet.requires_grad_(False)
    conditioning = CONDITIONING_CHANNELS[:len(frozen.vae.config.block_out_channels)]
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=conditioning).train()
    schedule = architecture.training_noise_schedule()
    spec = StageSpec("controlnet", steps=steps, lr=5e-4, seed=seed, ema_decay=0.995,
                     settings={"batch": batch, "conditioning": list(conditioning),
                               "caption_drop": CONTROLNET_CAPTION_DROP}, warmup=20)

    def loss_at(step: int) -> torch.Tensor:
        generator = stage_generator(seed, spec.name, step)
        data = frozen.batch(seed, spec.name, step, batch, generator=generator,
                            caption_drop=CONTROLNET_CAPTION_DROP)
        cond = edge_batch(data.scenes, frozen.side)

        def unet_with_control(sample, t, encoder_hidden_states):  # type: ignore[no-untyped-def]
            down, mid = controlnet(sample, t, encoder_hidden_states=encoder_hidden_states,
                                   controlnet_cond=cond, return_dict=False)
            return unet(sample, t, encoder_hidden_states=encoder_hidden_states,
                        down_block_additional_residuals=down, mid_block_additional_residual=mid)
        return noise_loss(unet_with_control, data, generator, schedule)

    stage = Stage(spec, work, dict(controlnet.named_parameters()), loss_at, quiet)
    stage.run()
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            p.copy_(stage.final_weights()[name])
    controlnet.eval().save_pretrained(stage.dir / "model", safe_serialization=True)
    return stage


def lora_config():  # type: ignore[no-untyped-def]
    from peft import LoraConfig

    return LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=LORA_TARGETS,
                      init_lora_weights=True)


def train_lora(work: Path, frozen: Frozen, style: str, seed: int, steps: int,
               batch: int = 32, quiet: bool = False) -> Stage:
    from peft import get_peft_model_state_dict

    unet = copy.deepcopy(load_unet(work))
    unet.requires_grad_(False)
    torch.manual_seed(seed + 3 + shapes.STYLES.index(style))
    config = lora_config()
    unet.add_adapter(config)
    params = {k: p for k, p in unet.named_parameters() if p.requires_grad}
    schedule = architecture.training_noise_schedule()
    odds = tuple(1.0 if s == style else 0.0 for s in shapes.STYLES)
    spec = StageSpec(f"lora_{style}", steps=steps, lr=2e-3, seed=seed,
                     settings={"batch": batch, "rank": LORA_RANK, "targets": LORA_TARGETS},
                     warmup=20)

    def loss_at(step: int) -> torch.Tensor:
        generator = stage_generator(seed, spec.name, step)
        data = frozen.batch(seed, spec.name, step, batch, style_odds=odds, generator=generator)
        return noise_loss(unet, data, generator, schedule)

    stage = Stage(spec, work, params, loss_at, quiet)
    stage.run()
    save_lora(unet, config, get_peft_model_state_dict(unet), stage.dir / f"{style}.safetensors")
    return stage


def save_lora(unet, config, layers: dict[str, torch.Tensor], path: Path) -> None:  # type: ignore[no-untyped-def]
    from diffusers import StableDiffusionPipeline

    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        path.parent, unet_lora_layers=layers, weight_name=path.name, safe_serialization=True,
        unet_lora_adapter_metadata=config.to_dict())
