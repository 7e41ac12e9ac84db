"""Local diffusers-format model folders and LoRA files; nothing is fetched from a hub.

A models folder holds base pipelines (folders with ``model_index.json``),
ControlNets under ``controlnets/``, LoRA ``.safetensors`` files under
``loras/`` and IP-Adapters under ``ip_adapters/NAME/`` (the adapter's
``.safetensors`` file beside its ``image_encoder/`` folder, as they are
published). Names are folder / file stems. Weights load only from safetensors:
a component that has nothing but pickled weights is refused.

The model classes are imported with this module, not on first use: the
libraries' lazy imports are not safe when two request threads load their
first models at once.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from services.common.errors import FailedPrecondition, NotFound
from services.common.lora_scan import LoraCatalog

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str  # "base", "inpainting", "controlnet", "lora", "ip_adapter"
    path: Path
    default_size: int = 0  # image side in pixels; 0 for LoRAs


def _read_json(path: Path) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


def _check_safetensors(folder: Path) -> None:
    files = [p.name for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    has_safe = any(f.endswith(".safetensors") for f in files)
    pickled = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickled and not has_safe:
        raise FailedPrecondition(
            f"{folder} holds only pickled weights ({', '.join(sorted(pickled))}); "
            "convert them to .safetensors", field="model")


class ModelStore:
    """Finds and loads the models of one folder. Loading is done by the caller's role."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FailedPrecondition(f"models folder {self.root} does not exist",
                                     field="models_dir")
        self._entries = self._scan()
        self.loras = LoraCatalog(self)     # which models each LoRA fits, on first use
        self._ip_widths: dict[Path, int] = {}
        self._lock = threading.Lock()

    def _scan(self) -> dict[str, ModelEntry]:
        entries: dict[str, ModelEntry] = {}
        for sub in sorted(self.root.iterdir()):
            if (sub / "model_index.json").is_file():
                unet = _read_json(sub / "unet" / "config.json")
                vae_scale = 2 ** (len(_read_json(sub / "vae" / "config.json")
                                      ["block_out_channels"]) - 1)
                kind = "inpainting" if unet.get("in_channels") == 9 else "base"
                size = int(unet.get("sample_size", 64)) * vae_scale
                entries[sub.name] = ModelEntry(sub.name, kind, sub, size)
        for sub in sorted((self.root / "controlnets").glob("*/config.json")):
            folder = sub.parent
            entries[folder.name] = ModelEntry(folder.name, "controlnet", folder)
        for file in sorted((self.root / "loras").glob("*.safetensors")):
            entries[file.stem] = ModelEntry(file.stem, "lora", file)
        for sub in sorted((self.root / "ip_adapters").glob("*/image_encoder/config.json")):
            folder = sub.parent.parent
            entries[folder.name] = ModelEntry(folder.name, "ip_adapter", folder)
        return entries

    def entries(self, kind: str | None = None) -> list[ModelEntry]:
        return [e for e in self._entries.values() if kind is None or e.kind == kind]

    def get(self, name: str, kinds: tuple[str, ...], field: str = "model") -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None or entry.kind not in kinds:
            known = sorted(e.name for e in self._entries.values() if e.kind in kinds)
            raise NotFound(f"unknown {'/'.join(kinds)} {name!r}; known: {', '.join(known)}",
                           field=field)
        return entry

    def pipeline(self, name: str) -> ModelEntry:
        return self.get(name, ("base", "inpainting"))

    # loaders, each for the role that needs it
    def load_unet(self, name: str, dtype: torch.dtype = torch.float32) -> Any:
        folder = self.pipeline(name).path / "unet"
        _check_safetensors(folder)
        return UNet2DConditionModel.from_pretrained(
            folder, torch_dtype=dtype, use_safetensors=True, local_files_only=True).eval()

    def load_vae(self, name: str, dtype: torch.dtype = torch.float32) -> Any:
        folder = self.pipeline(name).path / "vae"
        _check_safetensors(folder)
        return AutoencoderKL.from_pretrained(
            folder, torch_dtype=dtype, use_safetensors=True, local_files_only=True).eval()

    def load_text_encoder(self, name: str, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
        path = self.pipeline(name).path
        _check_safetensors(path / "text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(
            path / "text_encoder", torch_dtype=dtype, use_safetensors=True,
            local_files_only=True).eval()
        return tokenizer, encoder

    def load_controlnet(self, name: str, dtype: torch.dtype = torch.float32) -> Any:
        folder = self.get(name, ("controlnet",), field="controlnets.name").path
        _check_safetensors(folder)
        return ControlNetModel.from_pretrained(
            folder, torch_dtype=dtype, use_safetensors=True, local_files_only=True).eval()

    def ip_adapter_file(self, name: str) -> Path:
        """The adapter's weights: the one ``.safetensors`` file of its folder."""
        folder = self.get(name, ("ip_adapter",), field="ip_adapters.name").path
        files = sorted(folder.glob("*.safetensors"))
        if len(files) != 1:
            raise FailedPrecondition(f"IP-Adapter {name!r} needs exactly one .safetensors file "
                                     f"in {folder}, found {len(files)}", field="ip_adapters.name")
        return files[0]

    def ip_adapter_width(self, name: str) -> int:
        """The text-embedding width an IP-Adapter's image tokens have: its base model's."""
        path = self.ip_adapter_file(name)
        with self._lock:
            width = self._ip_widths.get(path)
        if width is None:
            with safe_open(str(path), framework="pt") as f:
                if "image_proj.proj.weight" not in f.keys():
                    raise FailedPrecondition(
                        f"IP-Adapter {name!r} has no linear image projection (the original "
                        "IP-Adapter layout); other layouts are not served",
                        field="ip_adapters.name")
                width = int(f.get_slice("image_proj.proj.weight").get_shape()[0]) // 4
            with self._lock:
                self._ip_widths[path] = width
        return width

    def cross_attention_dim(self, name: str) -> int:
        """The text-embedding width model ``name``'s UNet attends to."""
        dim = _read_json(self.pipeline(name).path / "unet" / "config.json")["cross_attention_dim"]
        return int(dim if isinstance(dim, int) else dim[0])

    def load_image_encoder(self, name: str, dtype: torch.dtype = torch.float32) -> Any:
        """The image encoder of IP-Adapter ``name``."""
        folder = self.get(name, ("ip_adapter",), field="ip_adapters.name").path / "image_encoder"
        _check_safetensors(folder)
        return CLIPVisionModelWithProjection.from_pretrained(
            folder, torch_dtype=dtype, use_safetensors=True, local_files_only=True).eval()

    def scheduler_config(self, name: str) -> dict[str, Any]:
        return _read_json(self.pipeline(name).path / "scheduler" / "scheduler_config.json")

    def vae_block_channels(self, name: str) -> list[int]:
        return list(_read_json(self.pipeline(name).path / "vae" / "config.json")
                    ["block_out_channels"])

    def vae_scaling_factor(self, name: str) -> float:
        return float(_read_json(self.pipeline(name).path / "vae" / "config.json")
                     .get("scaling_factor", 0.18215))

    def lora_path(self, name: str) -> Path:
        return self.get(name, ("lora",), field="loras.name").path


_LAZY_IMPORT = threading.Lock()


def new_scheduler(config: dict[str, Any]) -> Any:
    """A fresh scheduler of the class the model folder names, one per request."""
    with _LAZY_IMPORT:
        cls = getattr(diffusers, config["_class_name"])
    return cls.from_config(config)
