"""A seeded, randomly initialised AR image-embedding model and its embedding adapters, of the
real structure at toy widths (a causal LM from transformers' own Qwen2 classes, prefill
embeddings, a vision head; adapters of :class:`~services.common.ar_models.EmbedAdapter`).

    ROOT/ar/tiny-ar/                          hidden width 48, 81 image tokens
    ROOT/embed_adapters/tiny-embed-adapter/   48 -> 32 (a tiny Flux decoder's text width)
    ROOT/embed_adapters/tiny-embed-adapter-64/  64 -> 32: fits no AR model here (tests)

Nothing is downloaded: the tokenizer is a character-level vocabulary built here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from services.common.ar_models import AR_CONFIG, IMAGE_HEAD, EmbedAdapter

AR_WIDTH = 48
IMAGE_TOKENS = 81              # as the published model predicts
DECODER_WIDTH = 32             # the text width of the tiny Flux tree
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 ,.:;!?'-"
PROMPT_TEMPLATE = "generate an image according to the following description: {prompt}"


def char_tokenizer() -> Any:
    """One token per (lower-cased) character; unknown characters are <unk>."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(("<pad>", "<unk>", *CHARS))}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                   unk_token="<unk>")


def _lm(vocab_size: int) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab_size, hidden_size=AR_WIDTH, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config).eval()


def write_ar_model(folder: Path, seed: int) -> None:
    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    lm = _lm(len(tokenizer))
    lm.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    save_file({"image_prefill_embeds.weight": torch.randn(IMAGE_TOKENS, AR_WIDTH),
               "vision_head.weight": torch.randn(AR_WIDTH, AR_WIDTH) / AR_WIDTH ** 0.5,
               "vision_head.bias": torch.randn(AR_WIDTH) * 0.1},
              str(folder / IMAGE_HEAD))
    (folder / AR_CONFIG).write_text(json.dumps({"prompt_template": PROMPT_TEMPLATE}, indent=1))


def write_adapter(folder: Path, in_features: int, out_features: int, seed: int) -> None:
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    adapter = EmbedAdapter(in_features, out_features)
    for layer in adapter:
        if isinstance(layer, torch.nn.LayerNorm):   # not the identity its init would be
            torch.nn.init.normal_(layer.weight, 1.0, 0.1)
            torch.nn.init.normal_(layer.bias, 0.0, 0.1)
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(
        {"in_features": in_features, "out_features": out_features}, indent=1))


def write_ar_tree(root: Path, seed: int) -> None:
    write_ar_model(root / "ar" / "tiny-ar", seed)
    write_adapter(root / "embed_adapters" / "tiny-embed-adapter", AR_WIDTH, DECODER_WIDTH,
                  seed + 1)
    write_adapter(root / "embed_adapters" / "tiny-embed-adapter-64", 64, DECODER_WIDTH, seed + 2)
