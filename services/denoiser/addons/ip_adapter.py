"""IP-Adapters (image prompts), as a step-loop add-on.

An IP-Adapter adds, to every cross-attention layer of the UNet, an attention over a few image
tokens: the image encoder's embeddings (computed by the image encoder service) projected to
``tokens x cross_attention_dim``. Its weights are read with the library's own converters from
the file as published. The base UNet is left as it is: for a batch whose works carry IP-Adapters
the add-on swaps each cross-attention layer's processor for one that computes what the
library's ``IPAdapterAttnProcessor2_0`` computes, with a scale per row, so requests with the same
adapters but different scales share a batch; afterwards the layers get their own processors
back. A request's unconditional rows take zero image embeddings, as the pipelines give them.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open

from diffusion.v1 import denoiser_pb2
from services.common.errors import FailedPrecondition, InvalidArgument
from services.denoiser.addons import BuildContext, Export, ReadTensor
from services.denoiser.addons.base import Addon, BatchInput, Forward, StepRows
from services.denoiser.guiders import COND

MAX_SCALE = 2.0


@dataclass(frozen=True)
class IpAdapterSpec:
    name: str
    scale: float
    image_embeds: torch.Tensor       # [1, D]


@dataclass(frozen=True)
class IpAdapterRequest:
    adapters: tuple[IpAdapterSpec, ...]


@dataclass
class IpAdapterWeights:
    """One adapter, converted for one UNet: its projection and per-layer key/value maps."""

    projection: torch.nn.Module
    to_k: dict[str, torch.nn.Module]     # cross-attention module path -> Linear
    to_v: dict[str, torch.nn.Module]


def read_ip_adapter(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The published file as the library's loader splits it: ``image_proj`` and ``ip_adapter``."""
    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            part, _, rest = key.partition(".")
            if part in state:
                state[part][rest] = f.get_tensor(key)
    return state


def convert(state: dict[str, dict[str, torch.Tensor]], unet: Any) -> IpAdapterWeights:
    """The library's own conversion (what ``load_ip_adapter`` does), kept off the UNet."""
    if "proj.weight" not in state["image_proj"]:
        raise FailedPrecondition("only IP-Adapters with a linear image projection (the "
                                 "original IP-Adapter layout) are served", field="ip_adapters")
    projection = unet._convert_ip_adapter_image_proj_to_diffusers(state["image_proj"])
    processors = unet._convert_ip_adapter_attn_to_diffusers([state])
    to_k, to_v = {}, {}
    for name, processor in processors.items():
        if hasattr(processor, "to_k_ip"):
            module = name[:-len(".processor")]
            to_k[module], to_v[module] = processor.to_k_ip[0], processor.to_v_ip[0]
    return IpAdapterWeights(projection.eval(), to_k, to_v)


class IpAdapterCache:
    """Converted adapters per (adapter, UNet), loaded on first use."""

    def __init__(self, store: Any) -> None:
        self.store = store                # services.common.model_store.ModelStore
        self._loaded: dict[tuple[str, int], IpAdapterWeights] = {}
        self._lock = threading.Lock()

    def get(self, name: str, unet: Any) -> IpAdapterWeights:
        key = (name, id(unet))
        with self._lock:
            found = self._loaded.get(key)
        if found is not None:
            return found
        weights = convert(read_ip_adapter(self.store.ip_adapter_file(name)), unet)
        device, dtype = unet.device, unet.dtype
        weights.projection.to(device, dtype)
        for module in (*weights.to_k.values(), *weights.to_v.values()):
            module.to(device, dtype)
        with self._lock:
            return self._loaded.setdefault(key, weights)


class BatchIpAttnProcessor:
    """A cross-attention layer's processor for one batch: the text attention as the plain
    processor computes it, plus each adapter's image-token attention times its row scales."""

    def __init__(self, tokens: list[torch.Tensor], scales: list[torch.Tensor],
                 to_k: list[Any], to_v: list[Any]) -> None:
        self.tokens, self.scales, self.to_k, self.to_v = tokens, scales, to_k, to_v

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 temb: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length,
                                                         batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1,
                                                 attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        def merged(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)

        query = heads(query)
        hidden_states = F.scaled_dot_product_attention(
            query, heads(key), heads(value), attn_mask=attention_mask, dropout_p=0.0,
            is_causal=False)
        hidden_states = merged(hidden_states).to(query.dtype)
        for tokens, scale, to_k, to_v in zip(self.tokens, self.scales, self.to_k, self.to_v,
                                             strict=True):
            image = F.scaled_dot_product_attention(query, heads(to_k(tokens)),
                                                   heads(to_v(tokens)), attn_mask=None,
                                                   dropout_p=0.0, is_causal=False)
            hidden_states = hidden_states + scale * merged(image).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height,
                                                                    width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def image_attention(unet: Any, adapters: list[IpAdapterWeights], embeds: list[torch.Tensor],
                    scales: list[torch.Tensor]) -> Iterator[None]:
    """Every cross-attention layer attends to the adapters' image tokens for the block."""
    tokens = []
    for weights, rows in zip(adapters, embeds, strict=True):
        projected = weights.projection(rows.reshape(rows.shape[0] * rows.shape[1],
                                                    *rows.shape[2:]))
        tokens.append(projected.reshape(rows.shape[0], rows.shape[1], *projected.shape[1:]))
    row_scales = [s.reshape(-1, 1, 1) for s in scales]
    modules = dict(unet.named_modules())
    swapped = {}
    for path in adapters[0].to_k:
        attn = modules[path]
        swapped[path] = attn.processor
        attn.processor = BatchIpAttnProcessor(
            tokens, row_scales, [a.to_k[path] for a in adapters], [a.to_v[path] for a in adapters])
    try:
        yield
    finally:
        for path, processor in swapped.items():
            modules[path].processor = processor


class IpAdapterAddon(Addon):
    name = "ip_adapter"

    def __init__(self, spec: IpAdapterRequest, weights: list[IpAdapterWeights], unet: Any,
                 kinds: tuple[str, ...], images: int) -> None:
        self.names = tuple(a.name for a in spec.adapters)
        self.weights = weights
        self.unet = unet
        # Per adapter, this work's rows: its image's embeddings on the conditional rows,
        # zeros on the unconditional ones (the pipelines' negative image embeddings).
        self.embeds = [torch.cat([(a.image_embeds if k == COND
                                   else torch.zeros_like(a.image_embeds))[None]
                                  .repeat(images, 1, 1) for k in kinds])
                       for a in spec.adapters]
        rows = images * len(kinds)
        self.scales = [torch.full((rows,), a.scale) for a in spec.adapters]

    def batch_key(self) -> Hashable | None:
        return self.names

    def before_model(self, rows: StepRows) -> StepRows:
        for i, (embeds, scales) in enumerate(zip(self.embeds, self.scales, strict=True)):
            rows.extra[f"ip_adapter.{i}.embeds"] = embeds
            rows.extra[f"ip_adapter.{i}.scale"] = scales
        return rows

    def wrap_forward(self, forward: Forward, works: Sequence[Any]) -> Forward:
        count = len(self.names)

        def with_images(batch: BatchInput) -> torch.Tensor:
            embeds = [batch.extra[f"ip_adapter.{i}.embeds"] for i in range(count)]
            scales = [batch.extra[f"ip_adapter.{i}.scale"] for i in range(count)]
            with image_attention(self.unet, self.weights, embeds, scales):
                return forward(batch)
        return with_images


class IpAdapterKind:
    name = "ip_adapter"
    on_partner = True

    def __init__(self, cache: IpAdapterCache) -> None:
        self.cache = cache

    def decode(self, message: denoiser_pb2.IpAdapters, read: ReadTensor
               ) -> IpAdapterRequest | None:
        specs = []
        for i, a in enumerate(message.adapters):
            where = f"ip_adapter.adapters[{i}]"
            if not 0.0 <= a.scale <= MAX_SCALE:
                raise InvalidArgument(f"{a.scale} is outside [0, {MAX_SCALE}]",
                                      field=f"{where}.scale")
            embeds = read(a.image_embeds, f"{where}.image_embeds")
            if embeds is None or embeds.dim() != 2 or embeds.shape[0] != 1:
                raise InvalidArgument("image embeddings [1, D] are required",
                                      field=f"{where}.image_embeds")
            specs.append(IpAdapterSpec(a.name, a.scale, embeds))
        return IpAdapterRequest(tuple(specs)) if specs else None

    def encode(self, spec: IpAdapterRequest, export: Export) -> denoiser_pb2.IpAdapters:
        return denoiser_pb2.IpAdapters(adapters=[
            denoiser_pb2.IpAdapterAttachment(name=a.name, scale=a.scale,
                                             image_embeds=export(a.image_embeds))
            for a in spec.adapters])

    def build(self, spec: IpAdapterRequest, ctx: BuildContext) -> IpAdapterAddon:
        unet = ctx.engine.load_unet(ctx.model).unet
        weights = [self.cache.get(a.name, unet) for a in spec.adapters]
        for a, w in zip(spec.adapters, weights, strict=True):
            width = w.projection.image_embeds.in_features
            if a.image_embeds.shape[-1] != width:
                raise InvalidArgument(f"IP-Adapter {a.name!r} takes image embeddings of width "
                                      f"{width}, not {a.image_embeds.shape[-1]}",
                                      field="ip_adapter.adapters.image_embeds")
        return IpAdapterAddon(spec, weights, unet, ctx.kinds, ctx.num_images)
