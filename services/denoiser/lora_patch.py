"""Merging LoRAs into a UNet's weights in place, and restoring them bit for bit.

A *patch* is the set of (LoRA, scale) merged into the weights. Switching
patches restores every touched layer from a pristine copy (subtracting a
merged delta would not give the original bits back), then adds the new
deltas. No module is created or replaced on the way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import torch

from services.common.errors import InvalidArgument

Patch = tuple[tuple[str, float], ...]
NO_PATCH: Patch = ()

_DOWN = (".lora.down.weight", ".lora_A.weight")
_UP = (".lora.up.weight", ".lora_B.weight")


@dataclass(frozen=True)
class LoraLayer:
    down: torch.Tensor   # A: [r, in] or [r, in, k, k]
    up: torch.Tensor     # B: [out, r] or [out, r, 1, 1]
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self, scale: float) -> torch.Tensor:
        """The weight delta, computed as the merge of the reference implementation does."""
        scaling = scale * self.alpha / self.rank
        if self.down.dim() == 2:
            return (self.up @ self.down) * scaling
        if self.down.shape[2:] == (1, 1):
            merged = self.up.squeeze(3).squeeze(2) @ self.down.squeeze(3).squeeze(2)
            return merged.unsqueeze(2).unsqueeze(3) * scaling
        return torch.nn.functional.conv2d(
            self.down.permute(1, 0, 2, 3), self.up).permute(1, 0, 2, 3) * scaling


def _pattern_value(patterns: dict[str, Any], module: str, default: float) -> float:
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return float(value)
    return default


def parse_lora(tensors: dict[str, torch.Tensor], metadata: dict[str, str],
               prefix: str = "unet.") -> dict[str, LoraLayer]:
    """Module path -> layer, from diffusers- or peft-style keys (``lora.down``/``lora_A``)."""
    config: dict[str, Any] = {}
    if "lora_adapter_metadata" in metadata:
        raw = json.loads(metadata["lora_adapter_metadata"])
        config = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    downs: dict[str, torch.Tensor] = {}
    ups: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for key, tensor in tensors.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        for suffix in _DOWN:
            if name.endswith(suffix):
                downs[name[:-len(suffix)]] = tensor
        for suffix in _UP:
            if name.endswith(suffix):
                ups[name[:-len(suffix)]] = tensor
        if name.endswith(".alpha"):
            alphas[name[:-len(".alpha")]] = float(tensor.item())
    if set(downs) != set(ups):
        raise InvalidArgument("LoRA file has unpaired down/up weights", field="loras")
    layers = {}
    for module, down in downs.items():
        default_alpha = float(config.get("lora_alpha", down.shape[0]))
        alpha = alphas.get(module, _pattern_value(config.get("alpha_pattern") or {}, module,
                                                  default_alpha))
        layers[module] = LoraLayer(down=down.float(), up=ups[module].float(), alpha=alpha)
    if not layers:
        raise InvalidArgument("LoRA file has no UNet layers", field="loras")
    return layers


class LoraPatcher:
    """Holds one patch merged into ``unet`` at a time."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        self.modules = dict(unet.named_modules())
        self.pristine: dict[str, torch.Tensor] = {}
        self.current: Patch = NO_PATCH
        self.switches = 0

    def check(self, name: str, layers: dict[str, LoraLayer]) -> None:
        for module, layer in layers.items():
            target = self.modules.get(module)
            weight = getattr(target, "weight", None)
            if weight is None:
                raise InvalidArgument(f"LoRA {name!r} targets {module!r}, not in this UNet",
                                      field="loras")
            if tuple(layer.delta(1.0).shape) != tuple(weight.shape):
                raise InvalidArgument(f"LoRA {name!r} does not fit {module!r}: "
                                      f"{tuple(layer.delta(1.0).shape)} vs {tuple(weight.shape)}",
                                      field="loras")

    def apply(self, patch: Patch, loras: dict[str, dict[str, LoraLayer]]) -> None:
        """Makes ``patch`` the merged one; a no-op when it already is."""
        if patch == self.current:
            return
        with torch.no_grad():
            for module, original in self.pristine.items():
                self.modules[module].weight.data.copy_(original)
            for name, scale in patch:
                for module, layer in loras[name].items():
                    weight = self.modules[module].weight
                    if module not in self.pristine:
                        self.pristine[module] = weight.detach().clone()
                    weight.data += layer.delta(scale).to(weight.dtype)
        self.current = patch
        self.switches += 1
