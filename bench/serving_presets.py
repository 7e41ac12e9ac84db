"""The serving benchmark's model presets: which tree, which requests, which fleet settings.

``tiny`` and ``small`` are SD1.5-shaped trees (``services.common.tiny_model``),
where a LoRA loads in a fraction of a second. ``sdxl-shaped`` is the production-
shaped tree (``bench.sdxl_shaped``): SDXL's topology, LoRAs of published ranks and
SDXL's key counts under a popularity distribution, more of them than the fleet's
device tier holds, and the ControlNet+LoRA workflow in the mix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loadgen.workload import WorkloadSpec

PRESETS = ("tiny", "small", "sdxl-shaped")
SD_MIX = {"txt2img": 0.3, "controlnet": 0.2, "lora": 0.4, "edit": 0.1}
SDXL_MIX = {"txt2img": 0.25, "controlnet": 0.15, "lora": 0.3, "controlnet_lora": 0.15,
            "edit": 0.15}
LORA_POPULARITY = "zipf:1.0"
DEVICE_TIER_SHARE = 0.25  # of the sdxl-shaped LoRAs' bytes, the fleet's device tier holds


@dataclass(frozen=True)
class PresetTree:
    """A written tree and what the benchmark asks of it."""

    root: Path
    work: WorkloadSpec
    fleet_env: dict[str, str]


def write_tree(preset: str, root: Path, loras: int) -> Path:
    """The preset's tree under ``root``, written once and reused while it matches."""
    tree = root / "tree.json"
    meta = json.loads(tree.read_text()) if tree.exists() else {}
    if preset == "sdxl-shaped":
        from bench.sdxl_shaped import write_sdxl_shaped

        if meta.get("preset") != preset or len(meta.get("loras", [])) != loras:
            write_sdxl_shaped(root, seed=0, loras=loras)
    elif meta.get("preset") != preset:
        from services.common.tiny_model import write_tiny_model

        write_tiny_model(root, seed=0, preset=preset)
    return root


def preset_tree(preset: str, out: Path, size: int, steps: int, loras: int) -> PresetTree:
    root = write_tree(preset, out / f"models-{preset}", loras)
    if preset != "sdxl-shaped":
        work = WorkloadSpec(mix=dict(SD_MIX), model="tiny-sd", width=size, height=size,
                            steps=steps, loras=("tiny-lora-r4", "tiny-lora-r8"),
                            controlnets=("tiny-cn-a", "tiny-cn-b"))
        return PresetTree(root, work, {})
    meta = json.loads((root / "tree.json").read_text())
    work = WorkloadSpec(mix=dict(SDXL_MIX), model=meta["model"],
                        edit_model=f"{meta['model']}-inpainting", width=size, height=size,
                        steps=steps, loras=tuple(meta["loras"]), lora_popularity=LORA_POPULARITY,
                        controlnets=tuple(meta["controlnets"]))
    tier_bytes = DEVICE_TIER_SHARE * sum(f["nbytes"] for f in meta["lora_files"])
    env = {"DFLEET_LORA_DEVICE_BUDGET_MB": str(max(1, round(tier_bytes / (1 << 20))))}
    return PresetTree(root, work, env)
