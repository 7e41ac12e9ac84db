"""A seeded, randomly initialised Flux-shaped tree: the real Flux component classes (a CLIP text
encoder for the pooled embedding, a T5 encoder for the sequence, ``FluxTransformer2DModel``
over packed 16-channel latents, a VAE with a shift factor, the flow-match scheduler) at toy
widths.

    ROOT/tiny-flux-dev/        FluxPipeline folder, guidance-distilled (``guidance_embeds``),
                               FLUX.1-dev's scheduler (dynamic shift from the image size)
    ROOT/tiny-flux-schnell/    the same transformer shape without guidance embedding,
                               FLUX.1-schnell's scheduler (no shift)
    ROOT/controlnets/tiny-flux-cn/          a FluxControlNetModel of tiny-flux-dev (outputs
                                            re-randomised so it has an effect)
    ROOT/loras/tiny-flux-lora.safetensors   a diffusers/peft LoRA of the transformer

Nothing is downloaded: the T5 tokenizer is a character-level vocabulary built here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TEXT_WIDTH = 32       # CLIP's pooled width and T5's d_model
T5_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 ,.!?'-"
T5_SPECIAL = ("<pad>", "</s>", "<unk>")
# T5 pads every prompt to this many tokens, as the Flux pipelines' max_sequence_length does.
T5_MAX_LENGTH = 512


def t5_tokenizer() -> Any:
    """A T5-like fast tokenizer: one token per character (lower-cased), ``</s>`` appended,
    padded with ``<pad>``; distinct prompts give distinct ids."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate((*T5_SPECIAL, *T5_CHARS))}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>",
                                   model_max_length=T5_MAX_LENGTH)


def _t5_encoder(vocab_size: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(d_model=TEXT_WIDTH, d_ff=37, d_kv=8, num_layers=2,
                                   num_heads=4, vocab_size=vocab_size)).eval()


def _transformer(guidance: bool) -> Any:
    from diffusers import FluxTransformer2DModel

    # two joint and two single blocks, so a one-block ControlNet's residuals repeat
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_WIDTH,
        pooled_projection_dim=TEXT_WIDTH, guidance_embeds=guidance,
        axes_dims_rope=(4, 4, 8)).eval()


def _vae() -> Any:
    from diffusers import AutoencoderKL

    # FLUX.1's VAE: 16 latent channels, no quant convs, a shift before the scaling
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 8, 8),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035).eval()


def _scheduler(dev: bool) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    # the published FLUX.1-dev and FLUX.1-schnell scheduler configurations
    if dev:
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
            base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0,
                                           use_dynamic_shifting=False)


def _controlnet(transformer: Any) -> Any:
    """A one-block ControlNet of ``transformer``; its output layers (zero-initialised, which
    would make it a no-op) re-randomised."""
    from diffusers import FluxControlNetModel

    controlnet = FluxControlNetModel.from_transformer(
        transformer, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2)
    for linear in (*controlnet.controlnet_blocks, *controlnet.controlnet_single_blocks,
                   controlnet.controlnet_x_embedder):
        linear.reset_parameters()
    return controlnet.eval()


def _save_lora(path: Path, transformer: Any, seed: int) -> None:
    """A rank-4 LoRA of the attention projections in diffusers/peft keys (``transformer.*``)."""
    import copy

    from diffusers import FluxPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    model = copy.deepcopy(transformer)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_k_proj",
                                        "proj_mlp"])
    model.add_adapter(config)
    # scaled so the delta stays small next to the weights, as a trained LoRA's does
    layers = {k: v * 0.5 for k, v in get_peft_model_state_dict(model).items()}
    FluxPipeline.save_lora_weights(path.parent, transformer_lora_layers=layers,
                                   weight_name=path.name, safe_serialization=True,
                                   transformer_lora_adapter_metadata=config.to_dict())


def write_flux_tree(root: Path, seed: int, clip_tokenizer: Any, clip_vocab_size: int,
                    bos_id: int, eos_id: int) -> None:
    """The Flux pipelines, ControlNet and LoRA under ``root`` (the CLIP tokenizer is the SD
    tree's: Flux's is the same class)."""
    from diffusers import FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(
        hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=clip_vocab_size, max_position_embeddings=77,
        projection_dim=TEXT_WIDTH, bos_token_id=bos_id, eos_token_id=eos_id,
        pad_token_id=eos_id)).eval()
    tokenizer_2 = t5_tokenizer()
    t5 = _t5_encoder(len(tokenizer_2))
    vae = _vae()
    dev, schnell = _transformer(guidance=True), _transformer(guidance=False)
    for name, transformer, is_dev in (("tiny-flux-dev", dev, True),
                                      ("tiny-flux-schnell", schnell, False)):
        FluxPipeline(scheduler=_scheduler(is_dev), vae=vae, text_encoder=clip,
                     tokenizer=clip_tokenizer, text_encoder_2=t5, tokenizer_2=tokenizer_2,
                     transformer=transformer).save_pretrained(root / name,
                                                              safe_serialization=True)
    _controlnet(dev).save_pretrained(root / "controlnets" / "tiny-flux-cn",
                                     safe_serialization=True)
    _save_lora(root / "loras" / "tiny-flux-lora.safetensors", dev, seed + 1)
