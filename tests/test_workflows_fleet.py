"""Registered workflows through a live fleet (every service its own process).

A workflow no request kind covers (two ControlNets with their own step windows, an IP-Adapter
and a LoRA with separate denoiser and text-encoder strengths) equals the same computation in
plain diffusers (max |difference| <= 1e-5). Two registered workflows on one base model run
concurrently on the one denoiser replica and share its step batches, each exact. A built-in
workflow named with its inputs equals the plain request it is. Workflows are listed and read
back; a request naming a workflow is refused, naming the field, for a plain field, an unknown
or missing input, an input of the wrong type, an unknown workflow and a guidance scale with no
negative prompt; a bad spec is refused by RegisterWorkflow naming the spec's field. The CLI
registers a YAML spec and runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import dfleet
from tests.diffusers_reference import LOAD, reference, sample_image
from tests.workflow_specs import controlled, txt2img

TOLERANCE = 1e-5
EDGES, DEPTH, FACE = sample_image(1), sample_image(2), sample_image(7)


def controlled_reference(models: Path, prompt: str, seed: int, steps: int, lora: bool = True,
                         ip_adapter: bool = True) -> np.ndarray:
    """``tests.workflow_specs.controlled`` as a diffusers user writes it."""
    import diffusers

    nets = [diffusers.ControlNetModel.from_pretrained(models / "controlnets" / name,
                                                      local_files_only=True)
            for name in ("tiny-cn-a", "tiny-cn-b")]
    pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
        models / "tiny-sd", controlnet=nets, **LOAD)
    pipe.set_progress_bar_config(disable=True)
    extra: dict[str, Any] = {}
    if ip_adapter:
        pipe.load_ip_adapter(str(models / "ip_adapters" / "tiny-ip-adapter"), subfolder="",
                             weight_name="ip-adapter.safetensors",
                             image_encoder_folder="image_encoder")
        pipe.set_ip_adapter_scale(0.6)
        extra["ip_adapter_image"] = FACE
    if lora:
        pipe.load_lora_weights(str(models / "loras" / "tiny-lora-kohya.safetensors"),
                               adapter_name="r4")
        pipe.set_adapters(["r4"], [{"unet": 0.8, "text_encoder": 0.3}])
    with torch.no_grad():
        images: np.ndarray = pipe(
            prompt, image=[EDGES, DEPTH], controlnet_conditioning_scale=[0.7, 1.2],
            control_guidance_start=[0.0, 0.3], control_guidance_end=[0.6, 1.0],
            num_inference_steps=steps, guidance_scale=7.5,
            generator=torch.Generator().manual_seed(seed), height=64, width=64,
            output_type="np", **extra).images
    return images[0]


def test_a_workflow_no_request_kind_covers_equals_diffusers(fleet: Any,
                                                            tiny_models: Path) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=180) as client:
        workflow_id = client.register_workflow(controlled())
        result = client.generate(workflow=workflow_id, return_pixels=True, inputs={
            "prompt": "a house by a lake", "edges": EDGES, "depth": DEPTH, "face": FACE,
            "seed": 5, "steps": 12})
    assert result.metadata["workflow_id"] == workflow_id
    assert result.metadata["workflow"] == "workflow"
    assert result.images[0].output == "image"
    expected = controlled_reference(tiny_models, "a house by a lake", 5, 12)
    assert result.pixels is not None
    assert np.abs(result.pixels - expected).max() <= TOLERANCE, result.metadata
    same_strengths = controlled("one-strength").spec()
    next(n for n in same_strengths.nodes if n.id == "denoise").loras[0].ClearField(
        "text_encoder_scale")
    with dfleet.Client(fleet.gateway_address, timeout=180) as client:
        other = client.generate(workflow=client.register_workflow(same_strengths),
                                return_pixels=True, inputs={
                                    "prompt": "a house by a lake", "edges": EDGES,
                                    "depth": DEPTH, "face": FACE, "seed": 5, "steps": 12})
    assert np.abs(other.pixels - result.pixels).max() > 1e-3   # the text-encoder strength tells


def test_two_workflows_on_one_model_share_a_batch_and_stay_exact(fleet: Any,
                                                                 tiny_models: Path) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=180) as client:
        plain = client.register_workflow(txt2img("shared-a"))
        windowed = client.register_workflow(controlled("shared-b", lora=False, ip_adapter=False))

    def run(args: tuple[str, dict[str, Any]]) -> Any:
        with dfleet.Client(fleet.gateway_address, timeout=180) as client:
            return client.generate(workflow=args[0], inputs=args[1], return_pixels=True)
    runs = [(plain, {"prompt": "a ship", "seed": 61, "steps": 40}),
            (windowed, {"prompt": "a ship", "seed": 62, "steps": 40, "edges": EDGES,
                        "depth": DEPTH})]
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(run, runs)
    assert first.metadata["denoiser"] == second.metadata["denoiser"]
    for result in (first, second):
        assert int(result.metadata["denoise_batch_peak"]) >= 2, result.metadata
    assert np.abs(first.pixels - reference(tiny_models, prompt="a ship", seed=61, steps=40)
                  ).max() <= TOLERANCE
    expected = controlled_reference(tiny_models, "a ship", 62, 40, lora=False, ip_adapter=False)
    assert np.abs(second.pixels - expected).max() <= TOLERANCE


def test_a_builtin_by_name_is_the_plain_request(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=120) as client:
        plain = client.generate("a red fox", seed=3, steps=6, return_pixels=True)
        named = client.generate(workflow="txt2img.tiny-sd", return_pixels=True, inputs={
            "prompt": "a red fox", "seed": 3, "steps": 6})
        listed = {w.name: w for w in client.workflows()}
        shown = client.get_workflow("txt2img.tiny-sd")
    assert plain.metadata["workflow_id"] == named.metadata["workflow_id"] == shown.workflow_id
    assert plain.metadata["workflow"] == "txt2img"
    assert plain.pixels is not None and named.pixels is not None
    assert np.abs(plain.pixels - named.pixels).max() <= TOLERANCE
    assert listed["txt2img.tiny-sd"].builtin and shown.builtin
    assert [n.id for n in shown.spec.nodes] == ["prompt", "negative", "latent", "denoise",
                                                "decode"]
    assert {"prompt", "seed", "steps", "guidance_scale"} <= {i.name for i in shown.inputs}


BAD_RUNS: dict[str, tuple[dict[str, Any], str]] = {
    "plain_field": (dict(model="tiny-sd"), "model"),
    "unknown_input": (dict(inputs={"prompt": "x", "colour": "red"}), "inputs.colour"),
    "missing_input": (dict(inputs={}), "inputs.prompt"),
    "wrong_type": (dict(inputs={"prompt": "x", "steps": "many"}), "inputs.steps"),
    "bad_width": (dict(inputs={"prompt": "x", "width": 60}), "inputs.width"),
    "float_for_int": (dict(inputs={"prompt": "x", "seed": 1.5}), "inputs.seed"),
    "priority": (dict(inputs={"prompt": "x"}, priority=11), "priority"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_bad_workflow_requests_name_the_field(fleet: Any, case: str) -> None:
    params, field = BAD_RUNS[case]
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        workflow_id = client.register_workflow(txt2img())
        with pytest.raises(dfleet.InvalidArgument) as caught:
            client.generate(workflow=workflow_id, **params)
    assert caught.value.field == field, str(caught.value)


def test_a_mask_of_another_size_than_its_image_names_the_mask_input(fleet: Any) -> None:
    from tests.diffusers_reference import sample_image, sample_mask

    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        with pytest.raises(dfleet.InvalidArgument) as caught:
            client.generate(workflow="inpaint.tiny-sd-inpainting", inputs={
                "prompt": "x", "image": sample_image(3), "mask": sample_mask(32)})
    assert caught.value.field == "inputs.mask", str(caught.value)
    assert "mask is 32x32 but the image is 64x64" in str(caught.value)


def test_unknown_workflows_and_missing_negatives_are_refused(fleet: Any) -> None:
    wf = txt2img("no-negative")
    spec = wf.spec()
    denoise = next(n for n in spec.nodes if n.id == "denoise")
    del denoise.inputs["negative"]
    spec.nodes.remove(next(n for n in spec.nodes if n.id == "negative"))
    spec.inputs.remove(next(i for i in spec.inputs if i.name == "negative"))
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        with pytest.raises(dfleet.NotFound) as missing:
            client.generate(workflow="wf-0000", inputs={"prompt": "x"})
        workflow_id = client.register_workflow(spec)
        with pytest.raises(dfleet.InvalidArgument) as caught:
            client.generate(workflow=workflow_id, inputs={"prompt": "x", "guidance": 5.0})
        assert client.generate(workflow=workflow_id, inputs={
            "prompt": "x", "guidance": 1.0, "steps": 2}).png.startswith(b"\x89PNG")
        bad = txt2img("bad").spec()
        next(n for n in bad.nodes if n.id == "positive").model = "tiny-sdxl"
        with pytest.raises(dfleet.InvalidArgument) as refused:
            client.register_workflow(bad)
    assert missing.value.field == "workflow_id"
    assert caught.value.field == "inputs.guidance"
    assert refused.value.field == "spec.nodes[0].model"


def test_cli_registers_a_yaml_spec_and_runs_it(fleet: Any, tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(json.loads(txt2img("cli-wf").to_json())))
    sample_image(3).save(tmp_path / "unused.png")
    gateway = ["--gateway", fleet.gateway_address]

    def dfleet_cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "dfleet", "workflow", *args, *gateway],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout
    workflow_id = json.loads(dfleet_cli("register", str(tmp_path / "wf.yaml")))["workflow_id"]
    assert workflow_id in dfleet_cli("list")
    out = json.loads(dfleet_cli("run", workflow_id, "--input", "prompt=a boat", "--input",
                                "steps=3", "--input", "width=96", "-o",
                                str(tmp_path / "boat.png")))
    assert out["workflow_id"] == workflow_id
    from PIL import Image
    assert Image.open(tmp_path / "boat.png").size == (96, 64)
