"""Local diffusers-format model folders and LoRA files; nothing is fetched from a hub.

A models folder holds base pipelines (folders with ``model_index.json``, of a family in
:mod:`services.common.families`), ControlNets under ``controlnets/``, LoRA ``.safetensors``
files under ``loras/``, IP-Adapters under ``ip_adapters/NAME/`` (the adapter's
``.safetensors`` file beside its ``image_encoder/`` folder, as they are published), and
autoregressive image-embedding models and their adapters under ``ar/`` and
``embed_adapters/`` (:mod:`services.common.ar_models`). Names are
folder / file stems. Weights load only from safetensors (:mod:`services.common.model_files`).

A folder that cannot be served (a partial copy, pickled weights only, an unknown pipeline) is
skipped with its reason, logged and listed by :meth:`ModelStore.skipped`; it never stops the
fleet. The model classes are imported with this module, not on first use: the libraries' lazy
imports are not safe when two request threads load their first models at once.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (  # noqa: F401
    AutoencoderKL,
    ControlNetModel,
    FluxControlNetModel,
    FluxTransformer2DModel,
    UNet2DConditionModel,
)
from safetensors import safe_open
from transformers import (  # noqa: F401
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
    PreTrainedTokenizerFast,
    T5EncoderModel,
)

from services.common.ar_models import check_adapter_folder, check_ar_folder
from services.common.errors import FailedPrecondition, NotFound
from services.common.families import Family, TextModels, detect
from services.common.lora_scan import LoraCatalog
from services.common.model_files import (
    WeightsProblem,
    check_shards,
    load_component,
    read_json,
    weights_variant,
)

log = logging.getLogger("dfleet.models")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str  # "base", "inpainting", "controlnet", "lora", "ip_adapter", "ar_embed",
               # "embed_adapter"
    path: Path
    default_size: int = 0  # image side in pixels; 0 for LoRAs
    family: str = ""       # pipelines and ControlNets
    components: dict[str, tuple[str, str]] = field(default_factory=dict, compare=False)


def _pipeline_entry(folder: Path) -> ModelEntry:
    """The entry of a pipeline folder; WeightsProblem / ValueError say why it cannot be one."""
    index = read_json(folder / "model_index.json")
    family = detect(index)
    components = {name: (spec[0], spec[1]) for name, spec in index.items()
                  if isinstance(spec, list) and len(spec) == 2 and spec[0] and spec[1]}
    needed = [family.denoiser, "vae", "scheduler", *(c for pair in family.text_components
                                                     for c in pair)]
    for name in needed:
        if name not in components or not (folder / name).is_dir():
            raise WeightsProblem(f"{folder.name}: component {name!r} is missing")
    for name, (_, class_name) in components.items():
        if name == "scheduler" or "Tokenizer" in class_name:
            continue
        weights_variant(folder / name)
        check_shards(folder / name)
    denoiser = read_json(folder / family.denoiser / "config.json")
    vae = read_json(folder / "vae" / "config.json")
    vae_scale = 2 ** (len(vae["block_out_channels"]) - 1)
    kind = "inpainting" if denoiser.get("in_channels") == 9 else "base"
    size = family.default_size(denoiser, vae_scale)
    return ModelEntry(folder.name, kind, folder, size, family.name, components)


class ModelStore:
    """Finds and loads the models of one folder. Loading is done by the caller's role."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FailedPrecondition(f"models folder {self.root} does not exist",
                                     field="models_dir")
        self._skipped: dict[str, str] = {}
        self._entries = self._scan()
        self.loras = LoraCatalog(self)     # which models each LoRA fits, on first use
        self._ip_widths: dict[Path, int] = {}
        self._lock = threading.Lock()

    def _skip(self, name: str, reason: str) -> None:
        self._skipped[name] = reason
        log.warning("skipping model %s: %s", name, reason, extra={"model": name})

    def _scan(self) -> dict[str, ModelEntry]:
        entries: dict[str, ModelEntry] = {}
        for sub in sorted(self.root.iterdir()):
            if not (sub / "model_index.json").is_file():
                continue
            try:
                entries[sub.name] = _pipeline_entry(sub)
            except (OSError, ValueError, KeyError, WeightsProblem) as exc:
                self._skip(sub.name, str(exc))
        for sub in sorted((self.root / "controlnets").glob("*/config.json")):
            folder = sub.parent
            try:
                weights_variant(folder)
                check_shards(folder)
                entries[folder.name] = ModelEntry(folder.name, "controlnet", folder)
            except (OSError, ValueError, WeightsProblem) as exc:
                self._skip(folder.name, str(exc))
        for file in sorted((self.root / "loras").glob("*.safetensors")):
            entries[file.stem] = ModelEntry(file.stem, "lora", file)
        for sub in sorted((self.root / "ip_adapters").glob("*/image_encoder/config.json")):
            folder = sub.parent.parent
            entries[folder.name] = ModelEntry(folder.name, "ip_adapter", folder)
        for kind, pattern, check in (("ar_embed", "ar/*/config.json", check_ar_folder),
                                     ("embed_adapter", "embed_adapters/*/config.json",
                                      check_adapter_folder)):
            for sub in sorted(self.root.glob(pattern)):
                try:
                    check(sub.parent)
                    entries[sub.parent.name] = ModelEntry(sub.parent.name, kind, sub.parent)
                except (OSError, ValueError, KeyError, WeightsProblem) as exc:
                    self._skip(sub.parent.name, str(exc))
        return entries

    def entries(self, kind: str | None = None) -> list[ModelEntry]:
        return [e for e in self._entries.values() if kind is None or e.kind == kind]

    def first_base(self) -> str | None:
        """The model for requests that name none: the first base model by name of the
        first family in :data:`~services.common.families.FAMILIES` (SD1.5, SDXL, Flux), so
        adding a family's models to a folder does not change it; None when there is none."""
        from services.common.families import FAMILIES

        order = {name: i for i, name in enumerate(FAMILIES)}
        bases = sorted((order.get(e.family, len(order)), e.name) for e in self.entries("base"))
        return bases[0][1] if bases else None

    def skipped(self) -> dict[str, str]:
        """Folders and LoRA files that cannot be served: name -> why (asking matches the LoRA
        files against the models, once)."""
        refused = {name: fit.refusal for name, fit in self.loras.fits().items() if fit.refusal}
        return {**self._skipped, **refused}

    def get(self, name: str, kinds: tuple[str, ...], field: str = "model") -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None or entry.kind not in kinds:
            if name in self._skipped:
                raise FailedPrecondition(f"{name!r} cannot be served: {self._skipped[name]}",
                                         field=field)
            known = sorted(e.name for e in self._entries.values() if e.kind in kinds)
            raise NotFound(f"unknown {'/'.join(kinds)} {name!r}; known: {', '.join(known)}",
                           field=field)
        return entry

    def pipeline(self, name: str) -> ModelEntry:
        return self.get(name, ("base", "inpainting"))

    def family(self, name: str) -> Family:
        from services.common.families import FAMILIES

        return FAMILIES[self.pipeline(name).family]

    # configs
    def denoiser_config(self, name: str) -> dict[str, Any]:
        entry = self.pipeline(name)
        return read_json(entry.path / self.family(name).denoiser / "config.json")

    def controlnet_config(self, name: str) -> dict[str, Any]:
        return read_json(self.get(name, ("controlnet",), field="controlnets.name").path
                         / "config.json")

    def scheduler_config(self, name: str) -> dict[str, Any]:
        return read_json(self.pipeline(name).path / "scheduler" / "scheduler_config.json")

    def vae_config(self, name: str) -> dict[str, Any]:
        return read_json(self.pipeline(name).path / "vae" / "config.json")

    def vae_block_channels(self, name: str) -> list[int]:
        return list(self.vae_config(name)["block_out_channels"])

    def vae_scale_factor(self, name: str) -> int:
        return int(2 ** (len(self.vae_block_channels(name)) - 1))

    def vae_scaling_factor(self, name: str) -> float:
        return float(self.vae_config(name).get("scaling_factor", 0.18215))

    def vae_shift_factor(self, name: str) -> float | None:
        """What the VAE's latents are shifted by before the scaling (Flux's); None: none."""
        shift = self.vae_config(name).get("shift_factor")
        return None if shift is None else float(shift)

    def pipeline_config(self, name: str) -> dict[str, Any]:
        return read_json(self.pipeline(name).path / "model_index.json")

    def cross_attention_dim(self, name: str) -> int:
        """The text-embedding width model ``name``'s denoiser attends to."""
        dim = self.denoiser_config(name).get("cross_attention_dim", 0)
        return int(dim if isinstance(dim, int) else dim[0])

    # loaders, each for the role that needs it
    def _component(self, name: str, component: str, dtype: torch.dtype) -> Any:
        entry = self.pipeline(name)
        library, class_name = entry.components[component]
        return load_component(entry.path / component, library, class_name, dtype)

    def load_denoiser(self, name: str, dtype: torch.dtype = torch.float32) -> Any:
        return self._component(name, self.family(name).denoiser, dtype)

    def load_unet(self, name: str, dtype: torch.dtype = torch.float32) -> Any:
        return self.load_denoiser(name, dtype)

    def load_vae(self, name: str, dtype: torch.dtype = torch.float32) -> Any:
        return self._component(name, "vae", dtype)

    def load_text_models(self, name: str, dtype: torch.dtype = torch.float32) -> TextModels:
        pairs = self.family(name).text_components
        return TextModels([self._component(name, t, dtype) for t, _ in pairs],
                          [self._component(name, e, dtype) for _, e in pairs])

    def load_controlnet(self, name: str, dtype: torch.dtype = torch.float32) -> Any:
        folder = self.get(name, ("controlnet",), field="controlnets.name").path
        class_name = read_json(folder / "config.json").get("_class_name", "ControlNetModel")
        return load_component(folder, "diffusers", class_name, dtype)

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

    def load_image_encoder(self, name: str, dtype: torch.dtype = torch.float32) -> Any:
        """The image encoder of IP-Adapter ``name``."""
        folder = self.get(name, ("ip_adapter",), field="ip_adapters.name").path / "image_encoder"
        return load_component(folder, "transformers", "CLIPVisionModelWithProjection", dtype)

    def lora_path(self, name: str) -> Path:
        return self.get(name, ("lora",), field="loras.name").path
