"""LoRA files in the formats people download, converted as the pipelines' own loaders convert
them and merged in place, against diffusers ``load_lora_weights`` + ``set_adapters``.

Covers (in this process; the fleet runs the same conversion and merge through real service
processes in test_fleet_exact): peft files, a Kohya/A1111 SD1.5 file with 3x3 convolution
layers of their own rank and alpha and text-encoder layers (both the UNet and the text
encoder's output change as diffusers changes them), rank-stabilised LoRA (alpha / sqrt(rank)),
DoRA on linear and conv layers alone and after another LoRA on the same layers (in the
request's order, which changes the result); every image within 1e-4 of diffusers' and the
weights restored bit for bit. Files the fleet cannot apply in full are refused when the
models are scanned, with the LoRA's name and the count of unmatched keys: unknown keys in a
Kohya file, a layer of a module the model lacks, a peft layer of the wrong shape, Kohya-style
DoRA magnitudes (which the reference loader drops), a peft option a merge does not compute,
a file of which the converter would drop part without an error (sgm and diffusers block names
mixed); they are listed among what cannot be served, and the LoRA cache refuses to load them.
A Kohya SDXL file (sgm block names, both text encoders) equals diffusers too, and the text
encoder service merges text-encoder layers for one call and restores them bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from services.common.errors import FailedPrecondition
from services.common.lora_files import denoiser_layers, text_encoder_layers
from services.common.lora_merge import NO_PATCH, LoraPatcher, Patch
from services.common.model_store import ModelStore
from services.lora_cache.engine import LoraCacheEngine
from tests.diffusers_reference import LOAD

TOLERANCE = 1e-4
CALL = dict(prompt="a red fox", num_inference_steps=8, guidance_scale=7.5, height=64,
            width=64, output_type="np")


@pytest.fixture(scope="module")
def store(tiny_models: Path) -> ModelStore:
    return ModelStore(tiny_models)


def pipeline(store: ModelStore, model: str) -> Any:
    import diffusers

    cls = getattr(diffusers, store.pipeline_config(model)["_class_name"])
    pipe = cls.from_pretrained(store.root / model, **(LOAD if model == "tiny-sd" else {}))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Ours:
    """A pipeline with LoRAs merged in place into its UNet and text encoders, as the fleet
    does."""

    def __init__(self, store: ModelStore, model: str = "tiny-sd") -> None:
        self.store = store
        self.pipe = pipeline(store, model)
        self.unet = LoraPatcher(self.pipe.unet)
        self.texts = {c: LoraPatcher(getattr(self.pipe, c))
                      for c in ("text_encoder", "text_encoder_2") if hasattr(self.pipe, c)}

    def apply(self, patch: Patch) -> None:
        converted = {name: self.store.loras.converted(name).layers for name, _ in patch}
        self.unet.apply(patch, {n: denoiser_layers(c) for n, c in converted.items()})
        for component, patcher in self.texts.items():
            patcher.apply(patch, {n: text_encoder_layers(c).get(component, {})
                                  for n, c in converted.items()})

    def image(self, seed: int = 1) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = self.pipe(generator=torch.Generator().manual_seed(seed),
                                        **CALL).images
        return out


@pytest.fixture(scope="module")
def ours(store: ModelStore) -> Iterator[Ours]:
    pipeline = Ours(store)
    yield pipeline
    pipeline.apply(NO_PATCH)


def reference(store: ModelStore, patch: Patch, model: str = "tiny-sd") -> Any:
    """diffusers' own pipeline with the same files and scales."""
    pipe = pipeline(store, model)
    for name, _ in patch:
        pipe.load_lora_weights(str(store.lora_path(name)), adapter_name=name)
    if patch:
        pipe.set_adapters([n for n, _ in patch], [s for _, s in patch])
    return pipe


def reference_image(pipe: Any, seed: int = 1) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = pipe(generator=torch.Generator().manual_seed(seed), **CALL).images
    return out


@pytest.mark.parametrize("patch", [
    (("tiny-lora-r8", 0.9),),
    (("tiny-lora-kohya", 0.7),),
    (("tiny-lora-rslora", 1.2),),
    (("tiny-lora-dora", 0.8),),
    (("tiny-lora-r4", 0.7), ("tiny-lora-dora", 1.1)),
    (("tiny-lora-dora", 1.1), ("tiny-lora-r4", 0.7)),
], ids=lambda p: "+".join(f"{n}@{s}" for n, s in p))
def test_format_equals_diffusers(store: ModelStore, ours: Ours, patch: Patch) -> None:
    ours.apply(NO_PATCH)
    plain = ours.image()
    ours.apply(patch)
    mine = ours.image()
    theirs = reference_image(reference(store, patch))
    assert np.abs(mine - plain).max() > 0.02            # the LoRAs do change the image
    assert np.abs(mine - theirs).max() <= TOLERANCE


def test_kohya_sdxl_file_with_both_text_encoders_equals_diffusers(store: ModelStore) -> None:
    patch = (("tiny-sdxl-lora-kohya", 0.7),)
    ours, pipe = Ours(store, "tiny-sdxl"), reference(store, patch, "tiny-sdxl")
    plain = ours.image()
    tokens = pipe.tokenizer(["a red fox"], padding="max_length", max_length=77,
                            return_tensors="pt").input_ids
    with torch.no_grad():
        before = {c: getattr(ours.pipe, c)(tokens)[0] for c in ours.texts}
        ours.apply(patch)
        for component in ours.texts:            # both encoders change as diffusers changes them
            mine = getattr(ours.pipe, component)(tokens)[0]
            theirs = getattr(pipe, component)(tokens)[0]
            assert (mine - before[component]).abs().max().item() > 1e-2
            assert (mine - theirs).abs().max().item() <= TOLERANCE
    mine = ours.image()
    assert np.abs(mine - plain).max() > 0.02
    assert np.abs(mine - reference_image(pipe)).max() <= TOLERANCE


def test_text_encoder_service_merges_per_call_and_restores_bit_for_bit(
        store: ModelStore) -> None:
    from services.common.families import PromptInput
    from services.text_encoder.engine import TextEncoderEngine
    from services.text_encoder.loras import TextLora

    engine = TextEncoderEngine(store)
    prompts = [PromptInput("a red fox")]
    layers = text_encoder_layers(store.loras.converted("tiny-sdxl-lora-kohya").layers)
    plain = engine.encode("tiny-sdxl", prompts)[0]
    patched = engine.encode("tiny-sdxl", prompts, [TextLora("k", 0.7, layers)])[0]
    again = engine.encode("tiny-sdxl", prompts)[0]
    assert plain.keys() == patched.keys()
    assert all((patched[k] - plain[k]).abs().max().item() > 1e-3 for k in plain)
    assert all(torch.equal(again[k], plain[k]) for k in plain)


def test_dora_after_another_lora_depends_on_the_order(ours: Ours) -> None:
    first = (("tiny-lora-r4", 0.7), ("tiny-lora-dora", 1.1))
    ours.apply(first)
    a = ours.image()
    ours.apply(tuple(reversed(first)))
    assert np.abs(ours.image() - a).max() > 1e-3


def test_kohya_text_encoder_layers_change_the_encoding_as_diffusers(store: ModelStore,
                                                                    ours: Ours) -> None:
    patch = (("tiny-lora-kohya", 0.6),)
    pipe = reference(store, patch)
    tokens = pipe.tokenizer(["a red fox"], padding="max_length", max_length=77,
                            return_tensors="pt").input_ids
    ours.apply(NO_PATCH)
    with torch.no_grad():
        plain = ours.pipe.text_encoder(tokens)[0]
        ours.apply(patch)
        mine = ours.pipe.text_encoder(tokens)[0]
        theirs = pipe.text_encoder(tokens)[0]
    assert (mine - plain).abs().max().item() > 1e-2
    assert (mine - theirs).abs().max().item() <= TOLERANCE


def test_kohya_layers_keep_their_own_alpha(store: ModelStore) -> None:
    layers = denoiser_layers(store.loras.converted("tiny-lora-kohya").layers)
    conv = layers["down_blocks.0.resnets.0.conv1"]
    attention = layers["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert (conv.rank, conv.scaling) == (2, 0.75)
    assert (attention.rank, attention.scaling) == (4, 0.5)
    assert tuple(conv.down.shape[2:]) == (3, 3)
    rs = denoiser_layers(store.loras.converted("tiny-lora-rslora").layers)
    assert {layer.scaling for layer in rs.values()} == {3 / 2}     # alpha 3 / sqrt(rank 4)


def test_switching_back_restores_every_weight_bit_for_bit(store: ModelStore) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(store.root / "tiny-sd", **LOAD)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    patcher = LoraPatcher(pipe.unet)
    loras = {n: denoiser_layers(store.loras.converted(n).layers)
             for n in ("tiny-lora-kohya", "tiny-lora-dora")}
    patcher.apply((("tiny-lora-kohya", 0.5), ("tiny-lora-dora", 1.0)), loras)
    patcher.apply((("tiny-lora-dora", 0.3),), loras)
    patcher.apply(NO_PATCH, loras)
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(value, before[key]), key


def _folder(tmp_path: Path, tiny_models: Path, files: dict[str, tuple[dict[str, torch.Tensor],
                                                                      dict[str, str]]]) -> Path:
    (tmp_path / "tiny-sd").symlink_to(tiny_models / "tiny-sd")
    (tmp_path / "loras").mkdir()
    for name, (tensors, metadata) in files.items():
        save_file(tensors, str(tmp_path / "loras" / f"{name}.safetensors"), metadata=metadata)
    return tmp_path


def test_files_the_fleet_cannot_apply_in_full_are_refused_at_scan(tmp_path: Path,
                                                                  tiny_models: Path) -> None:
    kohya = load_file(str(tiny_models / "loras" / "tiny-lora-kohya.safetensors"))
    unknown = dict(kohya)
    unknown["lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a"] = torch.zeros(4, 4)
    unknown["lora_unet_down_blocks_7_resnets_0_conv1.lora_down.weight"] = torch.zeros(2, 4)
    unknown["lora_unet_down_blocks_7_resnets_0_conv1.lora_up.weight"] = torch.zeros(4, 2)
    unknown["lora_unet_down_blocks_7_resnets_0_conv1.alpha"] = torch.tensor(1.0)
    dora_scale = dict(kohya)
    dora_scale["lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale"] = torch.ones(1, 32)
    peft = load_file(str(tiny_models / "loras" / "tiny-lora-r4.safetensors"))
    key = next(k for k in peft if k.endswith("attn2.to_k.lora_A.weight"))
    wrong_shape = {**peft, key: torch.zeros(4, 7)}
    config = {"unet.r": 4, "unet.lora_alpha": 4, "unet.modules_to_save": ["conv_in"]}
    saves_modules = {"lora_adapter_metadata": json.dumps(config)}
    sdxl = load_file(str(tiny_models / "loras" / "tiny-sdxl-lora-kohya.safetensors"))
    mixed = dict(sdxl)       # sgm block names beside diffusers ones: the converter drops the sgm
    for key in [k for k in sdxl if k.startswith("lora_unet_input_blocks_4_1_")]:
        mixed[key.replace("input_blocks_4_1", "down_blocks_1_attentions_0")] = mixed.pop(key)
    folder = _folder(tmp_path, tiny_models, {
        "unknown": (unknown, {}), "dora-scale": (dora_scale, {}),
        "wrong-shape": (wrong_shape, {}), "saves-modules": (peft, saves_modules),
        "mixed-names": (mixed, {}), "fine": (kohya, {})})
    (folder / "tiny-sdxl").symlink_to(tiny_models / "tiny-sdxl")
    store = ModelStore(folder)
    fits = store.loras.fits()
    assert fits["fine"].fits == ("tiny-sd",) and not fits["fine"].refusal
    # 1 unknown key dropped before conversion + the made-up layer's down and up
    # per family, the model it came closest to: tiny-sd for these SD1.5 files
    assert "'unknown' fits no model here: 3 of its" in fits["unknown"].refusal
    assert "'wrong-shape' fits no model here: 2 of its" in fits["wrong-shape"].refusal  # A, B
    assert "dora_scale" in fits["dora-scale"].refusal
    assert "modules_to_save" in fits["saves-modules"].refusal
    assert "drops layers holding" in fits["mixed-names"].refusal
    assert fits["fine"].family == "sd15" and set(store.skipped()) == {
        "unknown", "dora-scale", "wrong-shape", "saves-modules", "mixed-names"}
    engine = LoraCacheEngine(store, budget_bytes=64 << 20)
    try:
        with pytest.raises(FailedPrecondition) as refused:
            engine.prepare("unknown")
        assert "'unknown' fits no model here: 3 of its" in str(refused.value)
        assert engine.names() == []
        assert engine.prepare("fine").nbytes > 0
    finally:
        engine.close()


def test_gateway_refuses_what_the_model_cannot_take_before_any_compute(tmp_path: Path,
                                                                       tiny_models: Path) -> None:
    from diffusion.v1 import gateway_pb2
    from services.common.errors import InvalidArgument
    from services.gateway.attachments.lora import LoraKind
    from services.gateway.generation import Generation
    from services.gateway.settings import GatewaySettings

    conv_in = {"unet.conv_in.lora_A.weight": torch.randn(2, 4, 3, 3) * 0.1,   # 4 channels:
               "unet.conv_in.lora_B.weight": torch.randn(32, 2, 1, 1) * 0.1}  # not inpainting
    bad = load_file(str(tiny_models / "loras" / "tiny-lora-kohya.safetensors"))
    bad["lora_unet_down_blocks_0_attentions_0_proj_in.lokr_w1"] = torch.zeros(2, 2)
    folder = _folder(tmp_path, tiny_models, {"conv-in": (conv_in, {}), "bad": (bad, {})})
    (folder / "tiny-sd-inpainting").symlink_to(tiny_models / "tiny-sd-inpainting")
    (folder / "loras" / "tiny-lora-r4.safetensors").symlink_to(
        tiny_models / "loras" / "tiny-lora-r4.safetensors")
    store = ModelStore(folder)

    def validate(model: str, name: str) -> Any:
        request = gateway_pb2.GenerateRequest(
            prompt="a fox", loras=[gateway_pb2.LoraInput(name="tiny-lora-r4"),
                                   gateway_pb2.LoraInput(name=name)])
        gen = Generation("r", model, "a fox", "", 64, 64, 20, 7.5, 0, 8)
        return LoraKind().validate(request, gen, store, GatewaySettings())

    assert validate("tiny-sd", "conv-in") is not None
    with pytest.raises(InvalidArgument) as misfit:
        validate("tiny-sd-inpainting", "conv-in")
    assert misfit.value.field == "loras[1].name"
    assert "match no layer of 'tiny-sd-inpainting'" in str(misfit.value)
    assert "it fits tiny-sd" in str(misfit.value)
    with pytest.raises(FailedPrecondition) as refused:
        validate("tiny-sd", "bad")
    assert refused.value.field == "loras[1].name"
    assert "'bad' fits no model here: 1 of its" in str(refused.value)
