"""The client SDK end to end against the monolithic baseline server (one worker, tiny model).

Covers: dfleet.Client and dfleet.AsyncClient over a real gRPC server started as a
subprocess; every workflow (txt2img, two ControlNets, two LoRAs, image-to-image,
inpainting) returns a PNG and float pixels that agree; the baseline's txt2img
equals a plain diffusers pipeline on the same folder and seed; a LoRA changes the
image and is unloaded after its request; stream events come in order (queued,
progress 1..N with previews, result); cancel, get, models, deadlines; bad input
raises the typed error naming the field and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dfleet
from bench.baseline_process import BaselineProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def address(tiny_models: Path):
    """A baseline server with one worker on the session's tiny model tree."""
    with BaselineProcess(tiny_models, workers=1, threads=1) as server:
        yield server.address


@pytest.fixture(scope="module")
def client(address: str):
    with dfleet.Client(address, timeout=60) as c:
        yield c


def _pixels_of_png(result: dfleet.Result) -> np.ndarray:
    return np.asarray(result.image.convert("RGB"), dtype=np.float32) / 255


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_txt2img_returns_png_pixels_and_metadata(client: dfleet.Client) -> None:
    result = client.generate("a cat", model="tiny-sd", seed=1, return_pixels=True)
    assert result.image.size == (64, 64)
    assert result.pixels is not None and result.pixels.shape == (64, 64, 3)
    assert result.pixels.dtype == np.float32
    assert 0.0 <= result.pixels.min() and result.pixels.max() <= 1.0
    # the PNG is the float image rounded the way diffusers rounds
    assert np.array_equal(np.asarray(result.image), (result.pixels * 255).round().astype(np.uint8))
    assert result.metadata["model"] == "tiny-sd" and result.metadata["seed"] == "1"
    assert result.latency_ms > 0 and result.request_id
    again = client.generate("a cat", model="tiny-sd", seed=1, return_pixels=True)
    other = client.generate("a cat", model="tiny-sd", seed=2, return_pixels=True)
    assert np.array_equal(again.pixels, result.pixels)
    assert np.abs(other.pixels - result.pixels).max() > 0.01


def test_baseline_equals_plain_diffusers_pipeline(client: dfleet.Client, tiny_models: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_models / "tiny-sd", local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a lighthouse", num_inference_steps=10, guidance_scale=6.0,
                    generator=torch.Generator().manual_seed(7), output_type="np").images[0]
    got = client.generate("a lighthouse", steps=10, guidance_scale=6.0, seed=7,
                          return_pixels=True)
    assert np.abs(got.pixels - expected).max() <= 1e-5


def test_every_workflow_returns_an_image(client: dfleet.Client) -> None:
    scene = np.zeros((64, 64, 3), dtype=np.uint8)
    scene[:, :32] = (200, 40, 40)
    mask = np.zeros((64, 64, 3), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    edges = Image.fromarray(255 - scene)
    plain = client.generate("a cat", seed=3, steps=8, return_pixels=True)
    runs = {
        "controlnet": {"controlnets": [dfleet.ControlNet("tiny-cn-a", edges),
                                        dfleet.ControlNet("tiny-cn-b", _png(edges), scale=0.5)]},
        "lora": {"loras": [dfleet.Lora("tiny-lora-r4", 0.8), dfleet.Lora("tiny-lora-r8", 0.5)]},
        "img2img": {"image": Image.fromarray(scene), "strength": 0.7},
        "inpaint": {"image": scene, "mask": mask},
    }
    for name, params in runs.items():
        result = client.generate("a cat", seed=3, steps=8, return_pixels=True, **params)
        assert result.image.size == (64, 64), name
        assert np.array_equal(np.asarray(result.image),
                              (result.pixels * 255).round().astype(np.uint8)), name
        assert np.abs(result.pixels - plain.pixels).max() > 1e-3, f"{name} changed nothing"
    assert client.generate("a cat", seed=3, steps=8, image=scene, mask=mask).metadata["model"] \
        == "tiny-sd-inpainting"
    # LoRAs are unloaded after their request: the plain request is unchanged
    after = client.generate("a cat", seed=3, steps=8, return_pixels=True)
    assert np.abs(after.pixels - plain.pixels).max() <= 1e-6


def test_image_inputs_accept_paths_and_bytes(client: dfleet.Client, tmp_path: Path) -> None:
    scene = Image.new("RGB", (64, 64), (10, 120, 200))
    path = tmp_path / "scene.png"
    scene.save(path)
    by_path = client.generate("x", seed=4, steps=5, image=path, return_pixels=True)
    by_bytes = client.generate("x", seed=4, steps=5, image=path.read_bytes(), return_pixels=True)
    by_pil = client.generate("x", seed=4, steps=5, image=scene, return_pixels=True)
    assert np.array_equal(by_path.pixels, by_bytes.pixels)
    assert np.array_equal(by_path.pixels, by_pil.pixels)


def test_stream_yields_queued_progress_then_result(client: dfleet.Client) -> None:
    events = list(client.stream("a dog", seed=5, steps=4, preview=True))
    assert isinstance(events[0], dfleet.Queued)
    progress = [e for e in events if isinstance(e, dfleet.Progress)]
    assert isinstance(events[-1], dfleet.Result)
    assert len(events) == len(progress) + 2
    assert [p.step for p in progress] == list(range(1, progress[0].total_steps + 1))
    assert all(p.preview is not None and p.preview.size == (64, 64) for p in progress)
    assert len({e.request_id for e in events}) == 1


def test_cancel_stops_a_running_request(client: dfleet.Client) -> None:
    stream = client.stream("long", seed=1, steps=400)
    queued = next(stream)
    assert isinstance(queued, dfleet.Queued)
    assert isinstance(next(stream), dfleet.Progress)
    assert client.cancel(queued.request_id) is True
    with pytest.raises(dfleet.Cancelled):
        for _ in stream:
            pass
    status = client.get(queued.request_id)
    assert status.state is dfleet.RequestState.CANCELLED
    assert status.step < 400
    assert client.cancel(queued.request_id) is False
    assert client.cancel("no-such-request") is False


def test_get_reports_a_finished_request(client: dfleet.Client) -> None:
    result = client.generate("a boat", seed=9, steps=3)
    status = client.get(result.request_id)
    assert status.state is dfleet.RequestState.SUCCEEDED
    assert status.result is not None and status.result.png == result.png
    with pytest.raises(dfleet.NotFound) as info:
        client.get("no-such-request")
    assert info.value.field == "request_id"


def test_deadline_raises_and_server_keeps_serving(client: dfleet.Client) -> None:
    with pytest.raises(dfleet.DeadlineExceeded):
        client.generate("slow", seed=1, steps=500, timeout=0.5)
    assert client.generate("fast", seed=1, steps=2).image.size == (64, 64)


def test_models_lists_the_tree(client: dfleet.Client) -> None:
    kinds = {m.name: m.kind for m in client.models()}
    assert {"tiny-sd": "base", "tiny-sd-inpainting": "inpainting", "tiny-sdxl": "base",
            "tiny-cn-a": "controlnet", "tiny-cn-b": "controlnet",
            "tiny-lora-r4": "lora", "tiny-lora-r8": "lora", "tiny-lora-kohya": "lora",
            "tiny-lora-rslora": "lora", "tiny-lora-dora": "lora"}.items() <= kinds.items()
    assert "tiny-sd-partial" not in kinds   # a folder the fleet skips is not served either


GRAY = np.full((64, 64, 3), 128, dtype=np.uint8)


@pytest.mark.parametrize("params, error, field", [
    ({"width": 30}, dfleet.InvalidArgument, "width"),
    ({"height": 4096}, dfleet.InvalidArgument, "height"),
    ({"steps": 5000}, dfleet.InvalidArgument, "num_inference_steps"),
    ({"guidance_scale": -1.0}, dfleet.InvalidArgument, "guidance_scale"),
    ({"model": "no-such-model"}, dfleet.NotFound, "model"),
    ({"loras": [dfleet.Lora("no-such-lora")]}, dfleet.NotFound, "loras[0].name"),
    ({"controlnets": [dfleet.ControlNet("tiny-cn-a", GRAY), dfleet.ControlNet("nope", GRAY)]},
     dfleet.NotFound, "controlnets[1].name"),
    ({"mask": GRAY}, dfleet.InvalidArgument, "mask"),
    ({"image": b"not an image"}, dfleet.InvalidArgument, "image"),
    ({"image": GRAY, "mask": np.zeros((32, 32, 3), np.uint8)}, dfleet.InvalidArgument, "mask"),
    ({"strength": 0.5}, dfleet.InvalidArgument, "strength"),
    ({"image": GRAY, "strength": 1.5}, dfleet.InvalidArgument, "strength"),
])
def test_bad_input_raises_typed_error_naming_the_field(client: dfleet.Client, params: dict,
                                                       error: type, field: str) -> None:
    with pytest.raises(error) as info:
        client.generate("bad", seed=1, **params)
    assert info.value.field == field
    assert field in info.value.message
    assert isinstance(info.value, dfleet.FleetError)


def test_async_client(address: str) -> None:
    async def scenario() -> None:
        async with dfleet.AsyncClient(address) as client:
            results = await asyncio.gather(*(client.generate("a cat", seed=s, steps=3)
                                              for s in (1, 2)))
            assert [r.metadata["seed"] for r in results] == ["1", "2"]
            kinds = []
            async for event in client.stream("a cat", seed=1, steps=2):
                kinds.append(type(event).__name__)
            assert kinds[0] == "Queued" and kinds[-1] == "Result" and "Progress" in kinds
            assert {m.kind for m in await client.models()} >= {"base", "lora"}
            with pytest.raises(dfleet.NotFound):
                await client.generate("x", model="no-such-model")
            status = await client.get(results[0].request_id)
            assert status.state is dfleet.RequestState.SUCCEEDED
            assert await client.cancel("no-such-request") is False

    asyncio.run(scenario())


def test_unreachable_gateway_raises_unavailable() -> None:
    with dfleet.Client("127.0.0.1:1", timeout=5) as client, pytest.raises(dfleet.Unavailable):
        client.models()
