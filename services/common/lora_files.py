"""LoRA files as users have them, converted by the pipelines' own LoRA loaders.

A file is read the way the pipeline's ``load_lora_weights`` reads it: the pipeline class's
``lora_state_dict`` converts Kohya/A1111 keys (``lora_unet_*``, ``lora_te_*``,
``lora_te1_*``/``lora_te2_*``), the Flux formats and diffusers/peft keys to diffusers keys and
network alphas; each component it loads (UNet or transformer, text encoders) then goes through
the library's own steps to a peft state dict and ``LoraConfig`` (the same functions
``load_lora_adapter`` and the text-encoder loader call). What peft would build for each module
(rank and alpha from the config's patterns, alpha / sqrt(rank) for rsLoRA, DoRA magnitudes,
the up projection's bias) becomes a :class:`~services.common.lora_merge.LoraLayer`.

Nothing is applied partially: every key that does not become a layer of a module the target
model has, with the shapes it has, is *unmatched*, and a file with unmatched keys is refused by
the caller. What the reference loader would drop or mis-apply without an error (Kohya-style
``dora_scale`` magnitudes, peft options that change the computation) is refused here.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import diffusers
import torch
from diffusers.configuration_utils import FrozenDict
from diffusers.loaders.lora_pipeline import StableDiffusionXLLoraLoaderMixin
from diffusers.utils.peft_utils import _create_lora_config
from diffusers.utils.state_dict_utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)
from peft.utils.other import get_pattern_key

from services.common.lora_merge import Layers, LoraLayer

ADAPTER_METADATA = "lora_adapter_metadata"
KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
TEXT_ENCODER_RANK_MODULES = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")
# peft options that would make the reference compute something a merge of these layers is not
UNSUPPORTED_OPTIONS = ("fan_in_fan_out", "modules_to_save", "layer_replication",
                       "layers_to_transform", "alora_invocation_tokens",
                       "trainable_token_indices", "target_parameters")
# The converters log what they drop; make sure those records exist whatever the verbosity.
for _logger in ("diffusers.loaders.lora_conversion_utils", "diffusers.loaders.lora_pipeline"):
    logging.getLogger(_logger).setLevel(logging.WARNING)
_PARTS = ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora_B.bias", "bias"),
          (".lora_magnitude_vector", "magnitude"))


class LoraFormatError(ValueError):
    """The file cannot be applied as the reference would apply it; the message says why."""


@dataclass(frozen=True)
class ModelLayout:
    """What a LoRA is converted and matched against: the pipeline class whose loader reads it,
    and the layers (module path -> weight shape) of each component that loader loads."""

    loader: str                                          # diffusers pipeline class name
    weights: dict[str, dict[str, tuple[int, ...]]]       # component -> module -> weight shape
    biases: dict[str, frozenset[str]]                    # component -> modules with a bias
    unet_config: dict[str, Any] | None = None


@dataclass(frozen=True)
class ConvertedLora:
    layers: dict[str, Layers]        # component -> module -> layer
    unmatched: tuple[str, ...]       # keys that became no layer of this model
    keys: int                        # keys of the file

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(c for c, layers in self.layers.items() if layers)


def convert(tensors: dict[str, torch.Tensor], metadata: dict[str, str],
            layout: ModelLayout) -> ConvertedLora:
    """The file's layers for ``layout``'s model; raises :class:`LoraFormatError` when the
    pipeline's converter refuses the file or it holds what the reference would not apply."""
    tensors = dict(tensors)
    if any("dora_scale" in key for key in tensors):
        raise LoraFormatError("it holds Kohya-style DoRA magnitudes (dora_scale), which the "
                              "reference loader drops; refused rather than applied differently")
    dropped = _not_kohya_grammar(tensors)
    for key in dropped:
        del tensors[key]
    loader = getattr(diffusers, layout.loader)
    state_dict, alphas = _converted(loader, tensors, layout)
    adapter = json.loads(metadata[ADAPTER_METADATA]) if metadata.get(ADAPTER_METADATA) else None
    if alphas and adapter:
        raise LoraFormatError("it has both network alphas and adapter metadata")
    layers: dict[str, Layers] = {}
    missed: list[str] = []
    claimed: set[str] = set()
    for component in loader._lora_loadable_modules:
        part = {k[len(component) + 1:]: v for k, v in state_dict.items()
                if k.startswith(f"{component}.")}
        if not part:
            continue
        claimed.update(f"{component}.{k}" for k in part)
        if component not in layout.weights:
            missed.extend(f"{component}.{k}" for k in part)
            continue
        read = _text_encoder_part if component.startswith("text_encoder") else _model_part
        layers[component], misfits = read(part, alphas, adapter, component, layout)
        missed.extend(f"{component}.{k}" for k in misfits)
    missed.extend(k for k in state_dict if k not in claimed)
    return ConvertedLora(layers, tuple(dropped + missed), len(dropped) + len(state_dict))


def _not_kohya_grammar(tensors: dict[str, torch.Tensor]) -> list[str]:
    """In a Kohya-style file, keys that are not a down/up/alpha of a layer with both factors
    (the converter would fail on them without saying how many there are)."""
    if not any(k.endswith(".lora_down.weight") for k in tensors):
        return []

    def layer(key: str) -> str | None:
        suffix = next((s for s in KOHYA_SUFFIXES if key.endswith(s)), None)
        return None if suffix is None else key[:-len(suffix)]
    paired = {layer(k) for k in tensors if k.endswith(".lora_down.weight")
              and f"{layer(k)}.lora_up.weight" in tensors}
    return [k for k in tensors if layer(k) not in paired]


def _converted(loader: Any, tensors: dict[str, torch.Tensor], layout: ModelLayout
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The pipeline's ``lora_state_dict`` on the file, called as its ``load_lora_weights``
    calls it."""
    kwargs: dict[str, Any] = {"return_lora_metadata": True}
    if "return_alphas" in inspect.signature(loader.lora_state_dict).parameters:
        kwargs["return_alphas"] = True
    if issubclass(loader, StableDiffusionXLLoraLoaderMixin) and layout.unet_config is not None:
        kwargs["unet_config"] = FrozenDict(layout.unet_config)
    before = _up_rows(tensors)    # the converters pop keys from the dict they are given
    with converter_warnings() as warnings:
        try:
            state_dict, alphas, _ = loader.lora_state_dict(tensors, **kwargs)
        except Exception as err:  # noqa: BLE001 - a converter failing on a user's file refuses it
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LoraFormatError(f"{layout.loader}'s LoRA converter refused it: {first}") from err
    if warnings:   # e.g. keys it could not place, dropped with a warning
        first = warnings[0].strip().splitlines()[0]
        raise LoraFormatError(f"{layout.loader}'s LoRA converter would drop part of it: {first}")
    after = _up_rows(state_dict)
    if after != before:
        # a converter may filter keys it does not know without a word; every output row of an
        # up projection lands in some converted layer (split or not) unless one was dropped
        raise LoraFormatError(f"{layout.loader}'s LoRA converter drops layers holding "
                              f"{before - after} of its {before} up-projection rows")
    return state_dict, alphas


def _up_rows(tensors: dict[str, torch.Tensor]) -> int:
    return sum(int(t.shape[0]) for k, t in tensors.items()
               if k.endswith(("up.weight", "lora_B.weight")) and t.dim() >= 2)


@contextmanager
def converter_warnings() -> Iterator[list[str]]:
    """The warnings the library logs on this thread meanwhile (its converters drop what they
    cannot place with a warning, not an error)."""
    caught: list[str] = []
    thread = threading.get_ident()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == thread and record.levelno >= logging.WARNING:
                caught.append(record.getMessage())
    handler = Catch()
    library = logging.getLogger("diffusers")
    library.addHandler(handler)
    try:
        yield caught
    finally:
        library.removeHandler(handler)


def _component_config(adapter: dict[str, Any] | None, component: str) -> dict[str, Any] | None:
    if adapter is None:
        return None
    return {k[len(component) + 1:]: v for k, v in adapter.items()
            if k.startswith(f"{component}.")}


def _model_part(part: dict[str, torch.Tensor], alphas: dict[str, Any] | None,
                adapter: dict[str, Any] | None, component: str, layout: ModelLayout
                ) -> tuple[Layers, list[str]]:
    """A UNet's or transformer's keys, as ``load_lora_adapter`` reads them."""
    if "lora_A" not in next(iter(part)):
        part = convert_unet_state_dict_to_peft(part)
    rank = {f"^{k}": int(v.shape[1]) for k, v in part.items() if "lora_B" in k and v.ndim > 1}
    if alphas:
        alphas = {k[len(component) + 1:]: v for k, v in alphas.items()
                  if k.startswith(f"{component}.")}
    return _layers(part, rank, alphas, _component_config(adapter, component), True,
                   layout.weights[component], layout.biases[component])


def _text_encoder_part(part: dict[str, torch.Tensor], alphas: dict[str, Any] | None,
                       adapter: dict[str, Any] | None, component: str, layout: ModelLayout
                       ) -> tuple[Layers, list[str]]:
    """A text encoder's keys, as the pipelines' text-encoder loader reads them."""
    modules = layout.weights[component]
    try:
        part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
    except ValueError:
        return {}, list(part)
    if not any(m == "text_model" or m.startswith("text_model.") for m in modules):
        part = {k.removeprefix("text_model."): v for k, v in part.items()}
    rank = {f"{m}.lora_B.weight": int(part[f"{m}.lora_B.weight"].shape[1]) for m in modules
            if m.endswith(TEXT_ENCODER_RANK_MODULES) and f"{m}.lora_B.weight" in part}
    if alphas is not None:
        alphas = {k[len(component) + 1:]: v for k, v in alphas.items()
                  if k.split(".")[0] == component}
    return _layers(part, rank, alphas, _component_config(adapter, component), False, modules,
                   layout.biases[component])


def _layers(part: dict[str, torch.Tensor], rank: dict[str, int], alphas: dict[str, Any] | None,
            config_kwargs: dict[str, Any] | None, is_unet: bool,
            modules: dict[str, tuple[int, ...]], biases: frozenset[str]
            ) -> tuple[Layers, list[str]]:
    """Module -> layer for each module of ``part`` that fits ``modules``, and the keys that
    do not; scaling as peft sets it from the config diffusers builds."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    stray: list[str] = []
    for key, tensor in part.items():
        for suffix, role in _PARTS:
            if key.endswith(suffix):
                grouped.setdefault(key[:-len(suffix)], {})[role] = tensor
                break
        else:
            stray.append(key)
    if not rank:
        return {}, list(part)
    config = _create_lora_config(part, alphas, config_kwargs, rank, is_unet=is_unet)
    for option in UNSUPPORTED_OPTIONS:
        if getattr(config, option, None):
            raise LoraFormatError(f"its adapter config sets {option}, which a merge of LoRA "
                                  "layers does not compute")
    layers: Layers = {}
    for module, parts in grouped.items():
        layer = _layer(module, parts, config, modules.get(module), module in biases)
        if layer is None:
            stray.extend(k for k in part if k.startswith(f"{module}.lora_"))
        else:
            layers[module] = layer
    return layers, stray


def _layer(module: str, parts: dict[str, torch.Tensor], config: Any,
           shape: tuple[int, ...] | None, has_bias: bool) -> LoraLayer | None:
    """The layer peft would build for ``module``, or None when it would not fit."""
    down, up = parts.get("down"), parts.get("up")
    if shape is None or down is None or up is None or len(shape) != down.dim():
        return None
    r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
    alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module),
                                     config.lora_alpha)
    out = shape[0]
    if (down.shape[0] != r or tuple(down.shape[1:]) != tuple(shape[1:]) or up.shape[0] != out
            or up.shape[1] != r or any(d != 1 for d in up.shape[2:])):
        return None
    magnitude, bias = parts.get("magnitude"), parts.get("bias")
    if bool(config.use_dora) != (magnitude is not None):
        return None
    if magnitude is not None and magnitude.numel() != out:
        return None
    if bias is not None and (not has_bias or bias.numel() != out):
        return None
    scaling = float(alpha) / (math.sqrt(r) if config.use_rslora else r)
    return LoraLayer(down, up, scaling,
                     None if magnitude is None else magnitude.reshape(out),
                     None if bias is None else bias.reshape(out))


# The form the LoRA cache holds and the services read: tensors named
# "component/module/part" and each layer's scaling in the metadata.
SCALINGS = "dfleet_scalings"


def pack(layers: dict[str, Layers]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {}
    scalings: dict[str, float] = {}
    for component, modules in layers.items():
        for module, layer in modules.items():
            base = f"{component}/{module}"
            scalings[base] = layer.scaling
            for part in ("down", "up", "magnitude", "bias"):
                value = getattr(layer, part)
                if value is not None:
                    tensors[f"{base}/{part}"] = value
    return tensors, {SCALINGS: json.dumps(scalings)}


def unpack(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, Layers]:
    layers: dict[str, Layers] = {}
    for base, scaling in json.loads(metadata[SCALINGS]).items():
        component, module = base.split("/", 1)
        layers.setdefault(component, {})[module] = LoraLayer(
            tensors[f"{base}/down"], tensors[f"{base}/up"], float(scaling),
            tensors.get(f"{base}/magnitude"), tensors.get(f"{base}/bias"))
    return layers


def denoiser_layers(layers: dict[str, Layers]) -> Layers:
    """The layers of the component that denoises (the UNet or transformer)."""
    return {module: layer for component, modules in layers.items()
            if not component.startswith("text_encoder") for module, layer in modules.items()}


def text_encoder_layers(layers: dict[str, Layers]) -> dict[str, Layers]:
    return {c: modules for c, modules in layers.items() if c.startswith("text_encoder")}
