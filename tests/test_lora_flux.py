"""Flux-format LoRA files (sd-scripts' names over Flux's fused layers), converted by
``FluxPipeline``'s own converter and merged in place, against diffusers loading the same file
into the same tiny transformer and CLIP text encoder (``load_lora_adapter`` /
``load_lora_into_text_encoder`` + the adapters' scale): outputs within 1e-4.

Covers: the fused ``img_attn_qkv`` split into to_q/to_k/to_v, the text stream's layers, the
single blocks' output projection and modulation, Kohya alphas folded into the factors, CLIP
layers (``lora_te1_``); a file with T5 layers (``lora_te2_``), which the converter drops
without an error, is refused with the count of what it would drop.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.common.lora_files import LoraFormatError, ModelLayout, convert
from services.common.lora_merge import LoraPatcher
from services.common.lora_scan import module_layout
from services.common.tiny_loras import KOHYA_TEXT, kohya_flux_layers, kohya_layers

TOLERANCE = 1e-4
SCALE = 0.8


def transformer() -> Any:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8]).eval()


def clip() -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    return CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()


@pytest.fixture(scope="module")
def flux_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ModelLayout]:
    (weights, biases), (text, text_biases) = module_layout(transformer()), module_layout(clip())
    layout = ModelLayout("FluxPipeline", {"transformer": weights, "text_encoder": text},
                         {"transformer": biases, "text_encoder": text_biases})
    generator = torch.Generator().manual_seed(3)
    tensors = kohya_flux_layers(weights, 4, 2.0, generator)
    tensors.update({k: v.to(torch.bfloat16) for k, v in kohya_layers(
        text, "lora_te1", KOHYA_TEXT, 4, 2.0, generator).items()})
    path = str(tmp_path_factory.mktemp("flux") / "flux-kohya.safetensors")
    save_file(tensors, path)
    return path, layout


def test_kohya_flux_file_equals_diffusers(flux_file: tuple[str, ModelLayout]) -> None:
    from diffusers import FluxPipeline
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    path, layout = flux_file
    converted = convert(load_file(path), {}, layout)
    assert not converted.unmatched
    assert any(m.endswith("attn.to_k") for m in converted.layers["transformer"])   # split qkv
    ours, ours_text = transformer(), clip()
    LoraPatcher(ours).apply((("k", SCALE),), {"k": converted.layers["transformer"]})
    LoraPatcher(ours_text).apply((("k", SCALE),), {"k": converted.layers["text_encoder"]})
    theirs, theirs_text = transformer(), clip()
    state, alphas, _ = FluxPipeline.lora_state_dict(path, return_alphas=True,
                                                    return_lora_metadata=True)
    theirs.load_lora_adapter(state, prefix="transformer", network_alphas=alphas,
                             adapter_name="k")
    theirs.set_adapters(["k"], [SCALE])
    FluxPipeline.load_lora_into_text_encoder(state, alphas, theirs_text, prefix="text_encoder",
                                             adapter_name="k")
    set_weights_and_activate_adapters(theirs_text, ["k"], [SCALE])
    torch.manual_seed(5)
    inputs = dict(hidden_states=torch.randn(1, 16, 64), encoder_hidden_states=torch.randn(1, 8, 32),
                  pooled_projections=torch.randn(1, 32), timestep=torch.tensor([0.5]),
                  img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3))
    ids = torch.randint(2, 100, (1, 12))
    with torch.no_grad():
        mine, plain = ours(**inputs).sample, transformer()(**inputs).sample
        assert (mine - plain).abs().max().item() > 1e-2
        assert (mine - theirs(**inputs).sample).abs().max().item() <= TOLERANCE
        text, plain_text = ours_text(ids)[0], clip()(ids)[0]
        assert (text - plain_text).abs().max().item() > 1e-2
        assert (text - theirs_text(ids)[0]).abs().max().item() <= TOLERANCE


def test_a_flux_file_with_t5_layers_is_refused(flux_file: tuple[str, ModelLayout]) -> None:
    path, layout = flux_file
    tensors = load_file(path)
    t5 = "lora_te2_encoder_block_0_layer_0_SelfAttention_q"
    tensors[f"{t5}.lora_down.weight"] = torch.zeros(4, 32)
    tensors[f"{t5}.lora_up.weight"] = torch.zeros(32, 4)
    with pytest.raises(LoraFormatError, match="drops layers holding 32 of its"):
        convert(tensors, {}, layout)
