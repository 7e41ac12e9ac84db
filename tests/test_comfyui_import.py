"""ComfyUI API-format import.

Golden files (tests/data/comfyui: text to image, with a LoRA of UNet and text-encoder layers,
with a ControlNet, image to image, inpainting) convert through the gateway's ImportWorkflow,
register and run through a live fleet, each equal to the request of the same kind made with
the plain request fields. The CLI imports a file. Every refusal rule is one test (in process,
on the tiny models folder), each naming the node id and class: the UI "Save" format, unknown
and custom classes, cycles, links to missing nodes and outputs, type mismatches of links and
literals, no output node, checkpoint / LoRA / ControlNet names not in the fleet, unsupported
samplers, regional or combined conditioning, model patches, file and URL loaders.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dfleet
from services.common.errors import InvalidArgument
from services.common.model_store import ModelStore
from services.gateway.workflows import comfyui
from tests.diffusers_reference import sample_image, sample_mask

DATA = Path(__file__).parent / "data" / "comfyui"
TOLERANCE = 1e-5
EDGES, PHOTO, MASK = sample_image(1), sample_image(3), sample_mask()

# golden file -> (its inputs, the same request with the plain fields)
GOLDEN: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "txt2img": ({}, dict(prompt="beautiful scenery nature glass bottle landscape",
                         negative_prompt="text, watermark", seed=42, steps=8,
                         guidance_scale=7.5, scheduler="euler")),
    "lora": ({}, dict(prompt="a portrait of a knight", negative_prompt="blurry", seed=7, steps=8,
                      guidance_scale=6.0, scheduler="dpmpp_2m_karras", num_images=2,
                      loras=[dfleet.Lora("tiny-lora-kohya", 0.8)])),
    "controlnet": ({"control_image": EDGES}, dict(
        prompt="a house", seed=21, steps=8, scheduler="euler_a",
        controlnets=[dfleet.ControlNet("tiny-cn-a", EDGES, scale=0.9)])),
    "img2img": ({"image": PHOTO}, dict(prompt="a painting of a bridge", seed=41, steps=10,
                                       scheduler="ddim", image=PHOTO, strength=0.7)),
    "inpaint": ({"image": PHOTO, "mask": MASK}, dict(
        prompt="a cat on a sofa", seed=51, steps=8, scheduler="unipc",
        model="tiny-sd-inpainting", image=PHOTO, mask=MASK)),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_file_runs_as_the_plain_request(fleet: Any, name: str) -> None:
    inputs, plain = GOLDEN[name]
    with dfleet.Client(fleet.gateway_address, timeout=180) as client:
        imported = client.import_workflow(DATA / f"{name}.json")
        assert imported.workflow_id and imported.spec.name == name
        converted = client.generate(workflow=imported.workflow_id, inputs=inputs,
                                    return_pixels=True)
        expected = client.generate(return_pixels=True, **plain)
    assert len(converted.images) == len(expected.images)
    for got, want in zip(converted.images, expected.images, strict=True):
        assert got.seed == want.seed
        assert np.abs(got.pixels - want.pixels).max() <= TOLERANCE, converted.metadata


def test_import_reports_notes_and_the_cli_imports(fleet: Any) -> None:
    source = json.loads((DATA / "controlnet.json").read_text())
    source["13"] = {"class_type": "ControlNetApply", "inputs": {
        "conditioning": ["6", 0], "control_net": ["11", 0], "image": ["12", 0],
        "strength": 0.9}}
    source["3"]["inputs"]["positive"], source["3"]["inputs"]["negative"] = ["13", 0], ["7", 0]
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        imported = client.import_workflow(content=json.dumps(source), name="cn", register=False)
        with pytest.raises(dfleet.InvalidArgument) as refused:    # over gRPC, the same rules
            client.import_workflow(content=_edit(_set("3", "sampler_name", "heun")))
    assert not imported.workflow_id
    assert any("node 13 (ControlNetApply)" in n and "negative" in n for n in imported.notes)
    assert "node 3 (KSampler)" in str(refused.value)
    assert refused.value.field == "content.3.inputs.sampler_name"
    done = subprocess.run([sys.executable, "-m", "dfleet", "workflow", "import",
                           str(DATA / "txt2img.json"), "--gateway", fleet.gateway_address],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["inputs"]["prompt"] == "text"


@pytest.fixture(scope="module")
def store(tiny_models: Path) -> ModelStore:
    return ModelStore(tiny_models)


def _txt2img() -> dict[str, Any]:
    return json.loads((DATA / "txt2img.json").read_text())


def _edit(change: Callable[[dict[str, Any]], None]) -> str:
    data = copy.deepcopy(_txt2img())
    change(data)
    return json.dumps(data)


def _set(node: str, name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d[node]["inputs"].__setitem__(name, value)


def _add(node: str, class_type: str, inputs: dict[str, Any],
         then: Callable[[dict[str, Any]], None] = lambda d: None
         ) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data[node] = {"class_type": class_type, "inputs": inputs}
        then(data)
    return change


UI_FORMAT = json.dumps({"last_node_id": 9, "last_link_id": 9, "version": 0.4,
                        "nodes": [{"id": 3, "type": "KSampler"}], "links": []})
LORA = {"model": ["4", 0], "clip": ["4", 1], "lora_name": "tiny-lora-r4.safetensors",
        "strength_model": 1.0, "strength_clip": 1.0}

# rule -> (the file, the node the refusal names, words of the message)
REFUSALS: dict[str, tuple[str, str, str]] = {
    "ui_save_format": (UI_FORMAT, "", "Export (API)"),
    "unknown_class": (_edit(lambda d: d["5"].__setitem__("class_type", "EmptyLatentImage2")),
                      "node 5 (EmptyLatentImage2)", "unknown or custom class"),
    "custom_class": (_edit(_add("20", "ImpactKSamplerBasicPipe", {})),
                     "node 20 (ImpactKSamplerBasicPipe)", "unknown or custom class"),
    "cycle": (_edit(_add("10", "LoraLoader", {**LORA, "model": ["10", 0]},
                         _set("3", "model", ["10", 0]))), "node 10 (LoraLoader)", "cycle"),
    "link_to_missing_node": (_edit(_set("3", "latent_image", ["99", 0])), "node 3 (KSampler)",
                             "node 99, which is not in the file"),
    "link_to_missing_output": (_edit(_set("3", "model", ["4", 5])), "node 3 (KSampler)",
                               "output 5 of node 4 (CheckpointLoaderSimple)"),
    "link_type_mismatch": (_edit(_set("3", "model", ["4", 1])), "node 3 (KSampler)",
                           "takes MODEL, but is linked to the CLIP output"),
    "literal_type_mismatch": (_edit(_set("3", "steps", "twenty")), "node 3 (KSampler)",
                              "takes INT"),
    "no_output_node": (_edit(lambda d: d.pop("9")), "", "no output node"),
    "checkpoint_not_in_fleet": (_edit(_set("4", "ckpt_name", "sd_xl_base_1.0.safetensors")),
                                "node 4 (CheckpointLoaderSimple)", "not in the fleet"),
    "lora_not_in_fleet": (_edit(_add("10", "LoraLoader", {**LORA, "lora_name": "nope.pt"},
                                     _set("3", "model", ["10", 0]))),
                          "node 10 (LoraLoader)", "not in the fleet"),
    "controlnet_not_in_fleet": (_edit(lambda d: d.update({
        "11": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "canny.pth"}},
        "12": {"class_type": "LoadImage", "inputs": {"image": "edges.png"}},
        "13": {"class_type": "ControlNetApply", "inputs": {
            "conditioning": ["6", 0], "control_net": ["11", 0], "image": ["12", 0],
            "strength": 1.0}}}) or _set("3", "positive", ["13", 0])(d)),
        "node 11 (ControlNetLoader)", "not in the fleet"),
    "unsupported_sampler": (_edit(_set("3", "sampler_name", "heun")), "node 3 (KSampler)",
                            "not served"),
    "regional_conditioning": (_edit(_add("10", "ConditioningCombine", {
        "conditioning_1": ["6", 0], "conditioning_2": ["7", 0]},
        _set("3", "positive", ["10", 0]))), "node 10 (ConditioningCombine)",
        "regional or combined conditioning"),
    "model_patch": (_edit(_add("10", "FreeU_V2", {"model": ["4", 0], "b1": 1.3, "b2": 1.4,
                                                  "s1": 0.9, "s2": 0.2},
                               _set("3", "model", ["10", 0]))), "node 10 (FreeU_V2)",
                    "model-patch"),
    "file_loader": (_edit(_add("10", "VAELoader", {"vae_name": "other.safetensors"},
                               _set("8", "vae", ["10", 0]))), "node 10 (VAELoader)",
                    "file or URL loaders"),
    "url": (_edit(lambda d: d.update({"12": {"class_type": "LoadImage", "inputs": {
        "image": "https://example.com/cat.png"}}})), "node 12 (LoadImage)", "URL"),
}


@pytest.mark.parametrize("rule", sorted(REFUSALS))
def test_each_refusal_names_the_node(store: ModelStore, rule: str) -> None:
    content, node, words = REFUSALS[rule]
    with pytest.raises(InvalidArgument) as caught:
        comfyui.convert(content, store, "refused")
    assert words in caught.value.message, caught.value.message
    assert node in caught.value.message
    if node:
        assert caught.value.field.startswith(f"content.{node.split()[1]}")
