"""Weights in a component folder as people have them, and loading a component from them.

A component folder (``unet/``, ``text_encoder_2/``, a ControlNet, ...) holds its config and
its weights as ``save_pretrained`` writes them: one ``.safetensors`` file, or shards with an
index, or only a precision variant (``diffusion_pytorch_model.fp16.safetensors``,
``model.bf16-00001-of-00002.safetensors``). Pickled weights (``.bin``, ``.ckpt``, ...) are never
loaded: a folder with both loads the safetensors, one with only pickled weights is refused.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
# model.safetensors, model.fp16.safetensors, model-00001-of-00002.safetensors,
# model.fp16-00001-of-00002.safetensors, model.safetensors.index.fp16.json
_VARIANT = re.compile(r"^[^.]+\.(?P<variant>[a-z0-9]+)(-\d+-of-\d+)?\.safetensors$")
_INDEX_VARIANT = re.compile(r"\.safetensors\.index\.(?P<variant>[a-z0-9]+)\.json$")
_LAZY_IMPORT = threading.Lock()


class WeightsProblem(Exception):
    """Why a component folder cannot be loaded."""


def read_json(path: Path) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


def weights_variant(folder: Path) -> str | None:
    """The variant to load (None: the plain files); WeightsProblem when nothing loadable."""
    if not (folder / "config.json").is_file():
        raise WeightsProblem(f"{folder} has no config.json")
    files = [p.name for p in folder.iterdir() if p.is_file()]
    safe = [f for f in files if f.endswith(".safetensors")]
    if not safe:
        pickled = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
        if pickled:
            raise WeightsProblem(f"{folder} holds only pickled weights ({', '.join(pickled)}); "
                                 "convert them to .safetensors")
        raise WeightsProblem(f"{folder} holds no weights")
    variants = set()
    for name in safe:
        match = _VARIANT.match(name)
        if match is None:
            return None  # a plain file or plain shards
        variants.add(match["variant"])
    for name in files:
        match = _INDEX_VARIANT.search(name)
        if match:
            variants.add(match["variant"])
    if len(variants) != 1:
        raise WeightsProblem(f"{folder} holds several variants ({', '.join(sorted(variants))}) "
                             "and no plain weights; keep one")
    return variants.pop()


def check_shards(folder: Path) -> None:
    """Every shard a safetensors index names is there (a partial copy is not)."""
    for index in folder.glob("*.safetensors.index*.json"):
        shards = set(read_json(index).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise WeightsProblem(f"{folder} misses {len(missing)} shard(s) its index names, "
                                 f"e.g. {missing[0]}")


def component_class(library: str, class_name: str) -> Any:
    with _LAZY_IMPORT:  # the libraries' lazy imports are not safe from two threads at once
        module = diffusers if library == "diffusers" else transformers
        return getattr(module, class_name)


def load_component(folder: Path, library: str, class_name: str,
                   dtype: torch.dtype = torch.float32) -> Any:
    """A model component from safetensors (its variant if that is all there is), in eval mode."""
    cls = component_class(library, class_name)
    if "Tokenizer" in class_name:
        return cls.from_pretrained(folder, local_files_only=True)
    return cls.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True,
                               local_files_only=True, variant=weights_variant(folder)).eval()
