"""LoRA files of the tiny trees in the formats people download, each written as its own tool
writes it (so tests exercise the readers, not a round trip through our own writer).

    loras/tiny-lora-kohya.safetensors   Kohya/A1111 (sd-scripts) keys for SD1.5: UNet attention,
                                        projections, feed-forward and 3x3 convolutions (own rank
                                        and alpha), text-encoder layers; fp16 with scalar alphas
    loras/tiny-lora-rslora.safetensors  peft rank-stabilised LoRA (alpha / sqrt(rank)), with its
                                        adapter config
    loras/tiny-lora-dora.safetensors    peft DoRA (magnitude vectors) on linear and conv layers
    loras/tiny-sdxl-lora-kohya.safetensors  Kohya SDXL: sgm UNet block names, both text encoders
                                        (``lora_te1_``, ``lora_te2_``)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from services.common.lora_scan import pipeline_layout

KOHYA_UNET_LINEAR = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2",
                     "proj_in", "proj_out")
KOHYA_UNET_CONV = ("conv1", "conv2")
KOHYA_TEXT = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def kohya_name(prefix: str, module: str) -> str:
    """sd-scripts' layer name: the prefix and the module path with dots as underscores.
    Text encoders are named by transformers' ``text_model.`` paths, as published files are."""
    if prefix.startswith("lora_te") and not module.startswith("text_model."):
        module = f"text_model.{module}"
    return f"{prefix}_{module}".replace(".", "_")


def kohya_layers(weights: dict[str, tuple[int, ...]], prefix: str, targets: tuple[str, ...],
                 rank: int, alpha: float, generator: torch.Generator, std: float = 0.25,
                 rename: Callable[[str], str] = str) -> dict[str, torch.Tensor]:
    """``lora_down`` / ``lora_up`` / ``alpha`` of every module (path -> weight shape) whose
    path ends in a target, shaped as sd-scripts shapes them (conv: down [r, in, kh, kw], up
    [out, r, 1, 1]); ``rename`` maps a module path to the trainer's own."""
    tensors: dict[str, torch.Tensor] = {}
    for path, shape in sorted(weights.items()):
        if not path.endswith(tuple(f".{t}" for t in targets)):
            continue
        name = kohya_name(prefix, rename(path))
        down_shape = (rank, *shape[1:])
        up_shape = (shape[0], rank, *([1] * (len(shape) - 2)))
        tensors[f"{name}.lora_down.weight"] = (torch.randn(down_shape, generator=generator)
                                               * std).half()
        tensors[f"{name}.lora_up.weight"] = (torch.randn(up_shape, generator=generator)
                                             * std).half()
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha)).half()
    return tensors


def kohya_metadata(rank: int, alpha: float, conv_rank: int, conv_alpha: float
                   ) -> dict[str, str]:
    """The training record sd-scripts writes beside the weights (no loader reads it)."""
    return {"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
            "ss_network_alpha": str(alpha),
            "ss_network_args": f'{{"conv_dim": "{conv_rank}", "conv_alpha": "{conv_alpha}"}}'}


def save_kohya_sd15(path: Path, pipeline: Path, seed: int) -> None:
    from safetensors.torch import save_file

    layout = pipeline_layout(pipeline)
    assert layout is not None
    unet, text = layout.weights["unet"], layout.weights["text_encoder"]
    generator = torch.Generator().manual_seed(seed)
    tensors = kohya_layers(unet, "lora_unet", KOHYA_UNET_LINEAR, 4, 2.0, generator)
    tensors.update(kohya_layers(unet, "lora_unet", KOHYA_UNET_CONV, 2, 1.5, generator, 0.1))
    tensors.update(kohya_layers(text, "lora_te", KOHYA_TEXT, 4, 2.0, generator))
    save_file(tensors, str(path), metadata=kohya_metadata(4, 2.0, 2, 1.5))


def sgm_path(path: str, layers_per_block: int) -> str:
    """A UNet module's path in the SDXL original (sgm) UNet sd-scripts trains on:
    ``down_blocks.1.attentions.0`` is ``input_blocks.4.1``, ``resnets.N.conv1`` is
    ``in_layers.2``, ``mid_block.attentions.0`` is ``middle_block.1``."""
    parts = path.split(".")
    per = layers_per_block + 1
    resnet = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
              "conv_shortcut": "skip_connection"}
    if parts[0] == "mid_block":
        block = {"resnets.0": "0", "attentions.0": "1", "resnets.1": "2"}[".".join(parts[1:3])]
        head, rest = f"middle_block.{block}", parts[3:]
    else:
        number, kind, layer = int(parts[1]), parts[2], int(parts[3])
        index = 1 + number * per + layer if parts[0] == "down_blocks" else number * per + layer
        sgm = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
        head, rest = f"{sgm}.{index}.{0 if kind == 'resnets' else 1}", parts[4:]
    if rest and rest[0] in resnet:
        rest = [resnet[rest[0]], *rest[1:]]
    return ".".join([head, *rest])


def save_kohya_sdxl(path: Path, pipeline: Path, seed: int) -> None:
    """sd-scripts' SDXL names: sgm UNet blocks, ``lora_te1_`` / ``lora_te2_`` encoders."""
    from safetensors.torch import save_file

    layout = pipeline_layout(pipeline)
    assert layout is not None and layout.unet_config is not None
    per_block = int(layout.unet_config["layers_per_block"])
    unet = {m: shape for m, shape in layout.weights["unet"].items()
            if m.startswith(("down_blocks.", "up_blocks.", "mid_block."))
            and (".attentions." in m or ".resnets." in m)}
    generator = torch.Generator().manual_seed(seed)
    tensors = kohya_layers(unet, "lora_unet", KOHYA_UNET_LINEAR, 4, 4.0, generator,
                           rename=lambda m: sgm_path(m, per_block))
    tensors.update(kohya_layers(unet, "lora_unet", KOHYA_UNET_CONV, 2, 1.0, generator, 0.1,
                                rename=lambda m: sgm_path(m, per_block)))
    for prefix, component in (("lora_te1", "text_encoder"), ("lora_te2", "text_encoder_2")):
        tensors.update(kohya_layers(layout.weights[component], prefix, KOHYA_TEXT, 4, 4.0,
                                    generator))
    save_file(tensors, str(path), metadata=kohya_metadata(4, 4.0, 2, 1.0))


def kohya_flux_layers(weights: dict[str, tuple[int, ...]], rank: int, alpha: float,
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
    """sd-scripts' Flux names, over the original model's fused layers: ``double_blocks_N``
    (``img_attn_qkv`` is the transformer's to_q, to_k and to_v in one), ``single_blocks_N``.
    The single blocks' ``linear1`` is left out: the converter splits it at Flux-dev widths."""
    double = sorted({int(m.split(".")[1]) for m in weights if m.startswith("transformer_blocks.")})
    single = sorted({int(m.split(".")[1]) for m in weights
                     if m.startswith("single_transformer_blocks.")})
    shapes: dict[str, tuple[int, ...]] = {}
    for i in double:
        block = f"transformer_blocks.{i}"
        out, hidden = weights[f"{block}.attn.to_q"]
        for side, attn, ff, norm in (("img", "attn.to_out.0", "ff", "norm1"),
                                     ("txt", "attn.to_add_out", "ff_context", "norm1_context")):
            name = f"lora_unet_double_blocks_{i}_{side}"
            shapes[f"{name}_attn_qkv"] = (3 * out, hidden)
            shapes[f"{name}_attn_proj"] = weights[f"{block}.{attn}"]
            shapes[f"{name}_mlp_0"] = weights[f"{block}.{ff}.net.0.proj"]
            shapes[f"{name}_mlp_2"] = weights[f"{block}.{ff}.net.2"]
            shapes[f"{name}_mod_lin"] = weights[f"{block}.{norm}.linear"]
    for i in single:
        shapes[f"lora_unet_single_blocks_{i}_linear2"] = weights[
            f"single_transformer_blocks.{i}.proj_out"]
        shapes[f"lora_unet_single_blocks_{i}_modulation_lin"] = weights[
            f"single_transformer_blocks.{i}.norm.linear"]
    tensors: dict[str, torch.Tensor] = {}
    for name, (out, inp) in shapes.items():
        tensors[f"{name}.lora_down.weight"] = (torch.randn(rank, inp, generator=generator)
                                               * 0.25).to(torch.bfloat16)
        tensors[f"{name}.lora_up.weight"] = (torch.randn(out, rank, generator=generator)
                                             * 0.25).to(torch.bfloat16)
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha)).to(torch.bfloat16)
    return tensors


def save_kohya_flux(path: Path, pipeline: Path, seed: int) -> None:
    """A Flux LoRA as sd-scripts writes it (bf16): transformer blocks and the CLIP encoder."""
    from safetensors.torch import save_file

    layout = pipeline_layout(pipeline)
    assert layout is not None
    generator = torch.Generator().manual_seed(seed)
    tensors = kohya_flux_layers(layout.weights["transformer"], 4, 2.0, generator)
    tensors.update({k: v.to(torch.bfloat16) for k, v in kohya_layers(
        layout.weights["text_encoder"], "lora_te1", KOHYA_TEXT, 4, 2.0, generator).items()})
    save_file(tensors, str(path), metadata=kohya_metadata(4, 2.0, 4, 2.0))


def save_peft_variant(path: Path, unet: Any, seed: int, *, use_rslora: bool = False,
                      use_dora: bool = False) -> None:
    """A peft-trained LoRA as ``save_lora_weights`` writes it, with its adapter config."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    model = copy.deepcopy(unet)
    config = LoraConfig(r=4, lora_alpha=3, init_lora_weights=False, use_rslora=use_rslora,
                        use_dora=use_dora, target_modules=["to_q", "to_v", "proj_in", "conv1"])
    model.add_adapter(config)
    layers = get_peft_model_state_dict(model)
    for key, value in layers.items():
        if "lora_magnitude_vector" in key:   # trained magnitudes differ from the weight norms
            layers[key] = value * (1 + 0.2 * torch.randn(value.shape))
        else:
            layers[key] = value * 0.5
    StableDiffusionPipeline.save_lora_weights(
        path.parent, unet_lora_layers=layers, weight_name=path.name, safe_serialization=True,
        unet_lora_adapter_metadata=config.to_dict())


def write_tiny_loras(root: Path, seed: int) -> None:
    """The files of every format whose base model the tree under ``root`` has."""
    from diffusers import UNet2DConditionModel

    loras = root / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    if (root / "tiny-sd").is_dir():
        unet = UNet2DConditionModel.from_pretrained(root / "tiny-sd" / "unet")
        save_kohya_sd15(loras / "tiny-lora-kohya.safetensors", root / "tiny-sd", seed)
        save_peft_variant(loras / "tiny-lora-rslora.safetensors", unet, seed + 1,
                          use_rslora=True)
        save_peft_variant(loras / "tiny-lora-dora.safetensors", unet, seed + 2, use_dora=True)
    if (root / "tiny-sdxl").is_dir():
        save_kohya_sdxl(loras / "tiny-sdxl-lora-kohya.safetensors", root / "tiny-sdxl", seed + 3)
    if (root / "tiny-flux-dev").is_dir():
        save_kohya_flux(loras / "tiny-flux-lora-kohya.safetensors", root / "tiny-flux-dev",
                        seed + 4)
