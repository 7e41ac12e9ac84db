"""Records, during an ordinary UNet forward, what later masked edits of a template read.

Hooks on the diffusers modules capture, for the batch rows of the requests
being recorded, every token of:

* each ResNet block's input (``x``) and the GroupNorm moments of its two
  norms' inputs (``m1``/``t1``, ``m2``/``t2``),
* each transformer's norm moments (``m``/``t``) and every self-attention's
  keys and values (``k{i}``/``v{i}``),
* each down/up sampler's input (``x``), the output head's input and moments,
* the UNet's output (``eps``, the output of ``conv_out``).

Entries are named ``"<module path>:<what>"``; token-major ``[rows, H*W, C]``.
The forward itself is untouched, so recorded rows stay exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D

from services.denoiser.masked_units import moments

Captured = dict[str, dict[str, torch.Tensor]]  # request -> entry -> tensor
HEAD = "conv_norm_out"
EPS = "eps"


def entry(module: str, what: str) -> str:
    return f"{module}:{what}"


def tokens(t: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H*W, C]``."""
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1])


class ActivationRecorder:
    """Captures template activations of chosen batch rows during the forwards of a block."""

    def __init__(self, unet: Any, dtype: torch.dtype) -> None:
        self.unet = unet
        self.dtype = dtype
        self._rows: dict[str, slice] = {}
        self._out: Captured = {}

    def _store(self, module: str, what: str, value: torch.Tensor) -> None:
        name = entry(module, what) if what else module
        for request, rows in self._rows.items():
            self._out[request][name] = value[rows].clone()

    def _input(self, module: str, x: torch.Tensor) -> None:
        self._store(module, "x", tokens(x).to(self.dtype))

    def _moments(self, module: str, x: torch.Tensor, groups: int, suffix: str) -> None:
        t = tokens(x)
        m = moments(t.reshape(-1, t.shape[2]), groups).reshape(t.shape[0], t.shape[1], -1)
        self._store(module, f"m{suffix}", m.float())
        self._store(module, f"t{suffix}", m.to(torch.float64).sum(1))

    def _hooks(self) -> list[tuple[torch.nn.Module, Callable[..., None], bool]]:
        """(module, hook, is_pre_hook) for every capture point."""
        hooks: list[tuple[torch.nn.Module, Callable[..., None], bool]] = []

        def pre(module: torch.nn.Module, arg: str, fn: Callable[[torch.Tensor], None]) -> None:
            def hook(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                fn(args[0] if args else kwargs[arg])
            hooks.append((module, hook, True))

        def post(module: torch.nn.Module, fn: Callable[[torch.Tensor], None]) -> None:
            hooks.append((module, lambda _m, _a, out: fn(out), False))

        for name, module in self.unet.named_modules():
            if isinstance(module, ResnetBlock2D):
                pre(module, "input_tensor", lambda x, n=name: self._input(n, x))
                pre(module, "input_tensor", lambda x, n=name, g=module.norm1.num_groups:
                    self._moments(n, x, g, "1"))
                pre(module.norm2, "input", lambda x, n=name, g=module.norm2.num_groups:
                    self._moments(n, x, g, "2"))
            elif isinstance(module, Transformer2DModel):
                pre(module, "hidden_states", lambda x, n=name, g=module.norm.num_groups:
                    self._moments(n, x, g, ""))
                for i, block in enumerate(module.transformer_blocks):
                    post(block.attn1.to_k, lambda k, n=name, w=f"k{i}": self._store(
                        n, w, k.to(self.dtype)))
                    post(block.attn1.to_v, lambda v, n=name, w=f"v{i}": self._store(
                        n, w, v.to(self.dtype)))
            elif isinstance(module, (Downsample2D, Upsample2D)):
                pre(module, "hidden_states", lambda x, n=name: self._input(n, x))
        norm = self.unet.conv_norm_out
        pre(norm, "input", lambda x: self._input(HEAD, x))
        pre(norm, "input", lambda x: self._moments(HEAD, x, norm.num_groups, ""))
        post(self.unet.conv_out, lambda out: self._store(EPS, "", tokens(out).float()))
        return hooks

    @contextmanager
    def capture(self, rows: dict[str, slice]) -> Iterator[Captured]:
        """Records rows ``rows[request]`` of the forward run inside the block."""
        self._rows = rows
        self._out = {request: {} for request in rows}
        handles = []
        try:
            for module, hook, is_pre in self._hooks():
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True)
                               if is_pre else module.register_forward_hook(hook))
            yield self._out
        finally:
            for handle in handles:
                handle.remove()
            self._rows = {}
