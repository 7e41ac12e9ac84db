"""What a model tree holds, read from config files only (the server process loads no weights).

Tree layout (as written by ``services.common.tiny_model``)::

    ROOT/<model>/model_index.json          a diffusers pipeline folder, base or inpainting
    ROOT/controlnets/<name>/config.json
    ROOT/loras/<name>.safetensors
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from services.common.model_files import weights_variant
from services.common.model_store import ModelStore

INPAINT_CHANNELS = 9
FAMILIES = ("sd15", "sdxl")   # what the baseline's workers run (its pipelines take a UNet)


@dataclass(frozen=True)
class PipelineModel:
    """A pipeline folder: ``kind`` is ``base`` or ``inpainting``; ``family`` ``sd`` or ``sdxl``."""

    name: str
    path: Path
    kind: str
    default_size: int
    family: str = "sd"
    variant: str | None = None   # the precision variant the folder holds only, if so


@dataclass(frozen=True)
class ModelCatalog:
    root: Path
    models: dict[str, PipelineModel] = field(default_factory=dict)
    controlnets: dict[str, Path] = field(default_factory=dict)
    loras: dict[str, Path] = field(default_factory=dict)

    def default_model(self) -> str:
        """The first SD base model by name (as the fleet's gateway picks), for requests that
        name none."""
        bases = sorted((m.family != "sd", n) for n, m in self.models.items() if m.kind == "base")
        return bases[0][1] if bases else ""

    def inpainting_for(self, name: str) -> str:
        """The inpainting model of base model ``name``: itself, or its ``-inpainting`` sibling."""
        model = self.models[name]
        if model.kind == "inpainting":
            return name
        sibling = f"{name}-inpainting"
        return sibling if sibling in self.models else name


def _pipeline_model(path: Path) -> PipelineModel:
    unet = json.loads((path / "unet" / "config.json").read_text())
    vae = json.loads((path / "vae" / "config.json").read_text())
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    sample = unet["sample_size"]
    sample = sample[0] if isinstance(sample, list) else sample
    kind = "inpainting" if unet["in_channels"] == INPAINT_CHANNELS else "base"
    index = json.loads((path / "model_index.json").read_text())
    family = "sdxl" if "XL" in index.get("_class_name", "") else "sd"
    return PipelineModel(name=path.name, path=path, kind=kind, default_size=int(sample) * scale,
                         family=family, variant=weights_variant(path / "unet"))


def scan_catalog(root: str | Path) -> ModelCatalog:
    """Reads the tree under ``root``; raises FileNotFoundError when it holds no pipeline. The
    pipelines are those the fleet serves from the same tree (its model store skips folders it
    cannot load), so both systems serve the same models; of the families the baseline runs."""
    root = Path(root)
    served = {e.name for e in ModelStore(root).entries()
              if e.kind in ("base", "inpainting") and e.family in FAMILIES}
    models = {p.name: _pipeline_model(p) for p in sorted(root.iterdir())
              if (p / "model_index.json").is_file() and p.name in served}
    if not models:
        raise FileNotFoundError(f"no diffusers pipeline folder under {root}")
    cn_dir, lora_dir = root / "controlnets", root / "loras"
    controlnets = {p.name: p for p in sorted(cn_dir.iterdir())
                   if (p / "config.json").is_file()} if cn_dir.is_dir() else {}
    loras = {p.stem: p for p in sorted(lora_dir.glob("*.safetensors"))} if lora_dir.is_dir() else {}
    return ModelCatalog(root=root, models=models, controlnets=controlnets, loras=loras)
