"""Autoregressive image-embedding models and embedding adapters, as model folders.

An AR model predicts a prompt's image embeddings with prefilled image-token autoregression:
the prompt's tokens (in the model's prompt template) are followed by one position per image
token whose input is that position's learned *prefill* embedding; the last hidden state
*before* each image position, through a linear *vision head*, is that image token's
embedding. Every position is known in advance, so one causal forward pass computes them all.
An embedding adapter (Linear, LayerNorm, ReLU, Linear, LayerNorm) maps them onto a diffusion
decoder's text width, where they replace the prompt embeddings.

    ROOT/ar/NAME/                a causal LM as transformers saves it (config.json,
                                 model.safetensors, the tokenizer's files), plus
      image_head.safetensors     image_prefill_embeds.weight [N, H], vision_head.{weight,bias}
      ar_config.json             {"prompt_template": "... {prompt} ..."}
    ROOT/embed_adapters/NAME/    config.json {"in_features": H, "out_features": D},
                                 model.safetensors
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, Qwen2ForCausalLM  # noqa: F401 (imported before use)

from services.common.model_files import WeightsProblem, load_component, read_json

AR_CONFIG = "ar_config.json"
IMAGE_HEAD = "image_head.safetensors"
ADAPTER_CONFIG = "config.json"


def check_ar_folder(folder: Path) -> None:
    """WeightsProblem when ``folder`` is not a whole AR model."""
    for name in ("config.json", AR_CONFIG, IMAGE_HEAD):
        if not (folder / name).is_file():
            raise WeightsProblem(f"{folder.name}: {name} is missing")
    config = read_json(folder / AR_CONFIG)
    if "{prompt}" not in str(config.get("prompt_template", "{prompt}")):
        raise WeightsProblem(f"{folder.name}: prompt_template has no {{prompt}}")


def check_adapter_folder(folder: Path) -> None:
    config = read_json(folder / ADAPTER_CONFIG)
    if not all(isinstance(config.get(k), int) for k in ("in_features", "out_features")):
        raise WeightsProblem(f"{folder.name}: config.json needs in_features and out_features")
    if not (folder / "model.safetensors").is_file():
        raise WeightsProblem(f"{folder.name}: model.safetensors is missing")


def ar_width(folder: Path) -> int:
    """The width of the embeddings an AR model predicts (its hidden size)."""
    return int(read_json(folder / "config.json")["hidden_size"])


def adapter_widths(folder: Path) -> tuple[int, int]:
    """(input width, output width) of an embedding adapter."""
    config = read_json(folder / ADAPTER_CONFIG)
    return int(config["in_features"]), int(config["out_features"])


class EmbedAdapter(torch.nn.Sequential):
    """Linear -> LayerNorm -> ReLU -> Linear -> LayerNorm."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(torch.nn.Linear(in_features, out_features),
                         torch.nn.LayerNorm(out_features), torch.nn.ReLU(),
                         torch.nn.Linear(out_features, out_features),
                         torch.nn.LayerNorm(out_features))


def load_adapter(folder: Path, dtype: torch.dtype = torch.float32) -> EmbedAdapter:
    adapter = EmbedAdapter(*adapter_widths(folder))
    adapter.load_state_dict(load_file(str(folder / "model.safetensors")))
    return adapter.to(dtype).eval()


@dataclass
class ArImageModel:
    """A causal LM with its tokenizer, prefill embeddings and vision head."""

    tokenizer: Any
    lm: Any                            # a transformers causal LM (``.model`` is its decoder)
    prefill: torch.Tensor              # [N, H]
    vision_head: torch.nn.Linear
    prompt_template: str

    @property
    def num_image_tokens(self) -> int:
        return int(self.prefill.shape[0])

    def embed(self, prompt: str) -> torch.Tensor:
        """``[1, N, H]``: the image-token embeddings for ``prompt``."""
        text = self.prompt_template.replace("{prompt}", prompt)
        ids = self.tokenizer(text, return_tensors="pt").input_ids
        with torch.inference_mode():
            tokens = self.lm.get_input_embeddings()(ids)
            sequence = torch.cat([tokens, self.prefill[None].to(tokens.dtype)], dim=1)
            hidden = self.lm.model(inputs_embeds=sequence).last_hidden_state
            first = ids.shape[1] - 1          # the position before image token 0
            return self.vision_head(hidden[:, first:first + self.num_image_tokens]).clone()


def load_ar(folder: Path, dtype: torch.dtype = torch.float32) -> ArImageModel:
    lm = load_component(folder, "transformers", read_json(folder / "config.json")
                        .get("architectures", ["Qwen2ForCausalLM"])[0], dtype)
    head = load_file(str(folder / IMAGE_HEAD))
    width = head["vision_head.weight"].shape[0]
    vision_head = torch.nn.Linear(head["vision_head.weight"].shape[1], width)
    vision_head.load_state_dict({"weight": head["vision_head.weight"],
                                 "bias": head["vision_head.bias"]})
    config = read_json(folder / AR_CONFIG)
    return ArImageModel(
        tokenizer=load_component(folder, "transformers", "AutoTokenizer"),
        lm=lm, prefill=head["image_prefill_embeds.weight"].to(dtype),
        vision_head=vision_head.to(dtype).eval(),
        prompt_template=str(config.get("prompt_template", "{prompt}")))
