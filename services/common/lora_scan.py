"""Which base models each LoRA file fits, known when the models are scanned.

Each pipeline folder gets a :class:`~services.common.lora_files.ModelLayout`: its pipeline
class (whose LoRA loader converts the files) and the layers of the components that loader
fills, read from a copy of each component built on the meta device (no weights are read).
Each LoRA file is converted from its header alone (tensors on the meta device; the scalar
alphas read) for every pipeline, and *fits* a pipeline when no key is unmatched. A file that
fits none is refused, with its name and the count of its unmatched keys against the model it
came closest to; the LoRA cache converts a file for the first pipeline it fits, and only
pipelines whose conversion is the same layers count as fitting.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import diffusers
import torch
from safetensors import safe_open

from services.common.errors import FailedPrecondition
from services.common.lora_files import ConvertedLora, LoraFormatError, ModelLayout, convert

log = logging.getLogger("dfleet.models")


@dataclass(frozen=True)
class LoraFit:
    """What the scan learned of one LoRA file."""

    name: str
    fits: tuple[str, ...] = ()           # pipelines it applies to in full
    family: str = ""                     # theirs (sd15, sdxl, ...)
    components: tuple[str, ...] = ()     # those it has layers for (unet, text_encoder, ...)
    dora: bool = False
    misfits: dict[str, str] = field(default_factory=dict)   # pipeline -> why it does not fit
    refusal: str = ""                    # why no model can use it; "" when some can

    @property
    def layout_of(self) -> str:
        """The pipeline the LoRA cache converts the file for."""
        return self.fits[0] if self.fits else ""

    @property
    def text_encoder_layers(self) -> bool:
        return any(c.startswith("text_encoder") for c in self.components)


class LoraCatalog:
    """Every LoRA of a model store with its fit, computed on first use (and each refusal
    logged once); the converted layers of a LoRA for the LoRA cache."""

    def __init__(self, store: Any) -> None:
        self.store = store                      # services.common.model_store.ModelStore
        self._lock = threading.Lock()
        self._fits: dict[str, LoraFit] | None = None
        self._layouts: dict[str, ModelLayout] = {}

    def fits(self) -> dict[str, LoraFit]:
        with self._lock:
            if self._fits is None:
                self._fits = self._scan()
            return self._fits

    def fit(self, name: str, field: str = "loras.name") -> LoraFit:
        self.store.get(name, ("lora",), field=field)
        return self.fits()[name]

    def usable(self, name: str, field: str = "loras.name") -> LoraFit:
        """``name``'s fit; FailedPrecondition naming ``field`` when no model can use it."""
        fit = self.fit(name, field)
        if fit.refusal:
            raise FailedPrecondition(fit.refusal, field=field)
        return fit

    def converted(self, name: str) -> ConvertedLora:
        """``name``'s layers, read and converted for the first pipeline it fits."""
        fit = self.usable(name)
        layout = self._layouts[fit.layout_of]
        try:
            result = convert(*read_tensors(self.store.get(name, ("lora",)).path), layout)
        except LoraFormatError as err:
            raise FailedPrecondition(f"LoRA {name!r}: {err}", field="loras.name") from err
        if result.unmatched:   # the file changed since the scan
            raise FailedPrecondition(_why(name, fit.layout_of, result), field="loras.name")
        return result

    def _scan(self) -> dict[str, LoraFit]:
        for entry in self.store.entries():
            if entry.kind in ("base", "inpainting") and entry.name not in self._layouts:
                layout = pipeline_layout(entry.path)
                if layout is not None:
                    self._layouts[entry.name] = layout
        families = {e.name: e.family for e in self.store.entries()}
        fits = {e.name: fit_lora(e.name, e.path, self._layouts, families)
                for e in self.store.entries("lora")}
        fits = {name: replace(fit, family=families[fit.fits[0]]) if fit.fits else fit
                for name, fit in fits.items()}
        for fit in fits.values():
            if fit.refusal:
                log.warning("refusing %s", fit.refusal, extra={"model": fit.name})
        return fits


def pipeline_layout(folder: Path) -> ModelLayout | None:
    """The LoRA layout of a pipeline folder; None when its pipeline class takes no LoRAs."""
    index = _read_json(folder / "model_index.json")
    loader = getattr(diffusers, index["_class_name"], None)
    components = getattr(loader, "_lora_loadable_modules", None)
    if not components:
        return None
    weights: dict[str, dict[str, tuple[int, ...]]] = {}
    biases: dict[str, frozenset[str]] = {}
    for component in components:
        library, class_name = (index.get(component) or [None, None])[:2]
        if library is None or not (folder / component / "config.json").is_file():
            continue
        model = _meta_model(library, class_name, folder / component)
        weights[component], biases[component] = module_layout(model)
    unet = folder / "unet" / "config.json"
    return ModelLayout(index["_class_name"], weights, biases,
                       _read_json(unet) if unet.is_file() else None)


def module_layout(model: torch.nn.Module
                  ) -> tuple[dict[str, tuple[int, ...]], frozenset[str]]:
    """A model's layers a LoRA can target (module -> weight shape), and those with a bias."""
    modules = list(model.named_modules())
    weights = {n: tuple(m.weight.shape) for n, m in modules
               if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2}
    biases = frozenset(n for n, m in modules
                       if isinstance(getattr(m, "bias", None), torch.Tensor))
    return weights, biases


def _meta_model(library: str, class_name: str, folder: Path) -> Any:
    cls = getattr(importlib.import_module(library), class_name)
    with torch.device("meta"):
        if library == "diffusers":
            return cls.from_config(cls.load_config(folder))
        return cls(cls.config_class.from_pretrained(folder))


def header_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors on the meta device, except scalars (alphas), which are
    read; and its metadata."""
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        for key in f.keys():
            piece = f.get_slice(key)
            shape = [int(d) for d in piece.get_shape()]
            if torch.Size(shape).numel() <= 1:
                tensors[key] = f.get_tensor(key)
            else:
                tensors[key] = torch.empty(shape, dtype=_DTYPES[piece.get_dtype()],
                                           device="meta")
    return tensors, metadata


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def fit_lora(name: str, path: Path, layouts: dict[str, ModelLayout],
             families: dict[str, str] | None = None) -> LoraFit:
    """``name``'s fit to each pipeline of ``layouts`` (whose families ``families`` says)."""
    try:
        tensors, metadata = header_tensors(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is refused, not fatal
        return LoraFit(name, refusal=f"LoRA {name!r} cannot be read: {err}")
    converted: dict[str, ConvertedLora | str] = {}
    values: list[tuple[dict[str, torch.Tensor], dict[str, str]]] = []
    for pipeline, layout in layouts.items():
        try:
            converted[pipeline] = convert(tensors, metadata, layout)
        except (LoraFormatError, NotImplementedError):
            # some converters look at values (a sparse up projection), not only shapes
            values = values or [read_tensors(path)]
            try:
                converted[pipeline] = convert(*values[0], layout)
            except LoraFormatError as err:
                converted[pipeline] = str(err)
    return _fit(name, converted, families or {})


def _fit(name: str, converted: dict[str, ConvertedLora | str],
         families: dict[str, str]) -> LoraFit:
    whole = {p: c for p, c in converted.items() if isinstance(c, ConvertedLora) and not c.unmatched}
    first = next(iter(whole.values()), None)
    fits = tuple(p for p, c in whole.items() if first is not None and _same(c, first))
    misfits = {p: _why(name, p, c) for p, c in converted.items() if p not in fits}
    if not fits:
        return LoraFit(name, misfits=misfits, refusal=_refusal(name, converted, families))
    assert first is not None
    dora = any(layer.magnitude is not None for layers in first.layers.values()
               for layer in layers.values())
    return LoraFit(name, fits, components=first.components, dora=dora, misfits=misfits)


def _same(a: ConvertedLora, b: ConvertedLora) -> bool:
    def shapes(c: ConvertedLora) -> dict[tuple[str, str], tuple[Any, ...]]:
        return {(comp, m): (tuple(layer.down.shape), tuple(layer.up.shape), layer.scaling)
                for comp, layers in c.layers.items() for m, layer in layers.items()}
    return shapes(a) == shapes(b)


def _why(name: str, pipeline: str, result: ConvertedLora | str) -> str:
    return f"LoRA {name!r}: {_reason(pipeline, result)}"


def _reason(pipeline: str, result: ConvertedLora | str) -> str:
    if isinstance(result, str):
        return f"cannot be applied to {pipeline!r}: {result}"
    if result.unmatched:
        return (f"{len(result.unmatched)} of its {result.keys} keys match no layer of "
                f"{pipeline!r} (first: {result.unmatched[0]!r})")
    return f"converts to other layers for {pipeline!r} than for the models it fits"


def _refusal(name: str, converted: dict[str, ConvertedLora | str],
             families: dict[str, str]) -> str:
    """Why no model takes the file: per family of models, the one it came closest to."""
    if not converted:
        return f"LoRA {name!r}: no base model in this folder takes LoRAs"

    def distance(pipeline: str) -> float:
        result = converted[pipeline]
        return len(result.unmatched) if isinstance(result, ConvertedLora) else float("inf")
    closest: dict[str, str] = {}
    for pipeline in sorted(converted, key=distance):
        closest.setdefault(families.get(pipeline, ""), pipeline)
    reasons = [_reason(p, converted[p]) for p in closest.values()]
    return f"LoRA {name!r} fits no model here: {'; '.join(reasons)}"


def _read_json(path: Path) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
           "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
