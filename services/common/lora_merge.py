"""Merging LoRAs into a model's weights in place, and restoring them bit for bit.

A *patch* is the list of (LoRA, scale) merged into the weights, in the request's order (the
order a DoRA layer's normalisation depends on). Switching patches restores every touched
parameter from a pristine copy (subtracting a merged delta would not give the original bits
back), then merges the new layers. No module is created or replaced on the way.

The merge is the one the reference implementation computes: a layer adds
``scale * scaling * up @ down`` (``scaling`` = alpha / rank, or alpha / sqrt(rank) for
rsLoRA); a DoRA layer then rescales each output row to its magnitude, normalised by the row
norm of the pristine weight plus its own delta. LoRAs on the same layer apply one after the
other, in the patch's order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.common.errors import InvalidArgument

Patch = tuple[tuple[str, float], ...]
NO_PATCH: Patch = ()


@dataclass(frozen=True)
class LoraLayer:
    """One module's LoRA factors, as the reference implementation holds them."""

    down: torch.Tensor                   # A: [r, in] or [r, in, kh, kw]
    up: torch.Tensor                     # B: [out, r] or [out, r, 1, 1]
    scaling: float                       # at scale 1: alpha / r, or alpha / sqrt(r) (rsLoRA)
    magnitude: torch.Tensor | None = None   # DoRA: [out], each output row's norm
    bias: torch.Tensor | None = None     # [out]: the up projection's bias, added to the layer's

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    def to(self, device: torch.device | str) -> LoraLayer:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)
        return LoraLayer(self.down.to(device), self.up.to(device), self.scaling,
                         move(self.magnitude), move(self.bias))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for t in (self.down, self.up, self.magnitude, self.bias) if t is not None)

    def delta(self, scale: float) -> torch.Tensor:
        """``scale * scaling * up @ down`` in the layer weight's shape, in float32."""
        down, up = self.down.float(), self.up.float()
        if down.dim() == 2:
            product = up @ down
        else:
            rank = self.rank
            product = (up.reshape(-1, rank) @ down.reshape(rank, -1)).reshape(
                up.shape[0], *down.shape[1:])
        return product * (scale * self.scaling)

    def merged(self, current: torch.Tensor, pristine: torch.Tensor, scale: float) -> torch.Tensor:
        """``current`` (float32, the weight so far) with this layer merged."""
        delta = self.delta(scale)
        if self.magnitude is None:
            return current + delta
        rows = (pristine.float() + delta).reshape(delta.shape[0], -1)
        factor = self.magnitude.float() / torch.linalg.norm(rows, dim=1)
        return factor.reshape(-1, *([1] * (delta.dim() - 1))) * (current + delta)


Layers = dict[str, LoraLayer]              # module path -> layer


class LoraPatcher:
    """Holds one patch merged into ``model`` at a time."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.pristine: dict[tuple[str, str], torch.Tensor] = {}   # (module, "weight"/"bias")
        self.current: Patch = NO_PATCH
        self.switches = 0

    def check(self, name: str, layers: Layers, field: str = "loras") -> None:
        """Refuses ``layers`` unless every one fits a module of this model."""
        misfits = [module for module, layer in layers.items() if not self._fits(module, layer)]
        if misfits:
            raise InvalidArgument(f"LoRA {name!r}: {len(misfits)} of {len(layers)} layers fit no "
                                  f"layer of this model (first: {misfits[0]!r})", field=field)

    def _fits(self, module: str, layer: LoraLayer) -> bool:
        weight = getattr(self.modules.get(module), "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != layer.down.dim():
            return False
        if layer.down.shape[1:] != weight.shape[1:] or layer.out_features != weight.shape[0]:
            return False
        if layer.magnitude is not None and layer.magnitude.numel() != weight.shape[0]:
            return False
        bias = getattr(self.modules[module], "bias", None)
        return layer.bias is None or (isinstance(bias, torch.Tensor)
                                      and bias.numel() == layer.bias.numel())

    def apply(self, patch: Patch, loras: dict[str, Layers]) -> None:
        """Makes ``patch`` the merged one; a no-op when it already is."""
        if patch == self.current:
            return
        with torch.no_grad():
            for (module, param), original in self.pristine.items():
                getattr(self.modules[module], param).data.copy_(original)
            touched = {module: None for name, _ in patch for module in loras[name]}
            for module in touched:
                self._merge(module, [(loras[name][module], scale) for name, scale in patch
                                     if module in loras[name]])
        self.current = patch
        self.switches += 1

    def _merge(self, module: str, layers: list[tuple[LoraLayer, float]]) -> None:
        weight = self._pristine(module, "weight")
        merged = weight.float()
        for layer, scale in layers:
            merged = layer.merged(merged, weight, scale)
        self.modules[module].weight.data.copy_(merged)
        biased = [(layer, scale) for layer, scale in layers if layer.bias is not None]
        if biased:
            bias = self._pristine(module, "bias").float()
            for layer, scale in biased:
                assert layer.bias is not None
                bias = bias + layer.bias.float() * (scale * layer.scaling)
            self.modules[module].bias.data.copy_(bias)

    def _pristine(self, module: str, param: str) -> torch.Tensor:
        key = (module, param)
        if key not in self.pristine:
            self.pristine[key] = getattr(self.modules[module], param).detach().clone()
        return self.pristine[key]
