"""The HTTP/JSON front (services/http_front) as a real uvicorn process beside the test
fleet, called by real HTTP clients: httpx, and OpenAI's own Python client pointed at it.

Covers: the native route computes what the SDK computes for the same request (so every
field arrives), server-sent events with a progress event per step, request lookup and
cancel, errors as JSON naming the field with HTTP codes mapped from gRPC codes, the
OpenAI images route (n, size, b64_json), the OpenAPI schema, and that the JSON body
covers every parameter the SDK takes.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import typing
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

import dfleet
from dfleet.inputs import GenerateParams
from services.http_front.schemas import GenerateBody
from tests.diffusers_reference import sample_image


def b64_png(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.fixture(scope="module")
def http(fleet: Any) -> str:
    service = fleet.spawn("http_front", ["--gateway", fleet.gateway_address])
    fleet._wait_port(service, http=True)
    return f"http://{service.address}"


def test_openapi_schema_is_served(http: str) -> None:
    schema = httpx.get(f"{http}/openapi.json", timeout=30).json()
    assert {"/v1/images/generations", "/v1/generations", "/v1/generations/{request_id}",
            "/v1/generations/{request_id}/cancel", "/v1/models"} <= set(schema["paths"])
    assert "GenerateBody" in schema["components"]["schemas"]


def test_native_request_computes_what_the_sdk_computes(http: str, fleet: Any) -> None:
    body = {"prompt": "a red fox", "seed": 11, "steps": 3, "guidance_scale": 6.0,
            "controlnets": [{"name": "tiny-cn-a", "image": b64_png(sample_image(5)),
                             "scale": 0.8}],
            "loras": [{"name": "tiny-lora-r4", "scale": 0.7}]}
    reply = httpx.post(f"{http}/v1/generations", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    found = reply.json()
    png = base64.b64decode(found["images"][0]["b64_png"])
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    with dfleet.Client(fleet.gateway_address, timeout=300) as client:
        same = client.generate("a red fox", seed=11, steps=3, guidance_scale=6.0,
                               controlnets=[dfleet.ControlNet("tiny-cn-a", sample_image(5),
                                                              scale=0.8)],
                               loras=[dfleet.Lora("tiny-lora-r4", 0.7)])
    assert png == same.png
    status = httpx.get(f"{http}/v1/generations/{found['request_id']}", timeout=30).json()
    assert status["state"] == "succeeded" and status["result"]["images"][0]["b64_png"]


def _events(response: httpx.Response) -> typing.Iterator[tuple[str, dict[str, Any]]]:
    event = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            yield event, json.loads(line[len("data: "):])


def test_a_workflow_runs_by_name_with_its_inputs(http: str, fleet: Any) -> None:
    body = {"workflow": "img2img.tiny-sd", "priority": 3, "inputs": {
        "prompt": "a bridge", "seed": 5, "steps": 3, "strength": 0.7,
        "image": {"image": b64_png(sample_image(3))}}}
    reply = httpx.post(f"{http}/v1/generations", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    found = reply.json()
    with dfleet.Client(fleet.gateway_address, timeout=300) as client:
        same = client.generate("a bridge", seed=5, steps=3, strength=0.7, image=sample_image(3))
    assert found["metadata"]["priority"] == "3"
    assert base64.b64decode(found["images"][0]["b64_png"]) == same.png


def test_progress_arrives_per_step_as_server_sent_events(http: str, fleet: Any) -> None:
    body = {"prompt": "a boat", "seed": 2, "steps": 4, "model": "tiny-sd"}
    with httpx.stream("POST", f"{http}/v1/generations?stream=true", json=body,
                      timeout=300) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(_events(response))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "queued" and kinds[-1] == "result", kinds
    steps = [data["step"] for kind, data in events if kind == "progress"]
    total = next(data["total_steps"] for kind, data in events if kind == "progress")
    # the denoiser reports each step but the last, which the result reports
    assert steps == list(range(1, total)) and total >= 4
    with dfleet.Client(fleet.gateway_address, timeout=300) as client:
        direct = [e.step for e in client.stream("a boat", seed=2, steps=4, model="tiny-sd")
                  if isinstance(e, dfleet.Progress)]
    assert steps == direct  # every progress event of the gRPC stream, one SSE event each


def test_cancel_stops_a_streaming_request(http: str) -> None:
    body = {"prompt": "a long one", "seed": 3, "steps": 150}
    ended: list[tuple[str, dict[str, Any]]] = []
    started = threading.Event()

    def listen() -> None:
        with httpx.stream("POST", f"{http}/v1/generations",
                          headers={"Accept": "text/event-stream"}, json=body,
                          timeout=300) as response:
            for kind, data in _events(response):
                ended.append((kind, data))
                if kind == "progress":
                    started.set()

    thread = threading.Thread(target=listen)
    thread.start()
    assert started.wait(240)
    request_id = ended[0][1]["request_id"]
    reply = httpx.post(f"{http}/v1/generations/{request_id}/cancel", timeout=30)
    assert reply.json() == {"request_id": request_id, "cancelled": True}
    thread.join(240)
    kind, data = ended[-1]
    assert kind == "error" and data["code"] == "CANCELLED", ended[-1]


@pytest.mark.parametrize("body, status, code, field", [
    ({"prompt": "x", "width": 60}, 400, "INVALID_ARGUMENT", "width"),
    ({"prompt": "x", "steps": "many"}, 400, "INVALID_ARGUMENT", "steps"),
    ({"prompt": "x", "colour": "red"}, 400, "INVALID_ARGUMENT", "colour"),
    ({"prompt": "x", "model": "no-such-model"}, 404, "NOT_FOUND", "model"),
    ({"prompt": "x", "image": "%%%"}, 400, "INVALID_ARGUMENT", "image"),
    ({"prompt": "x", "loras": [{"name": "tiny-lora-r4", "scale": "big"}]}, 400,
     "INVALID_ARGUMENT", "loras[0].scale"),
    ({"prompt": "x", "return_pixels": True}, 400, "INVALID_ARGUMENT", "return_pixels"),
])
def test_bad_input_is_a_json_error_naming_the_field(http: str, body: dict[str, Any],
                                                    status: int, code: str,
                                                    field: str) -> None:
    reply = httpx.post(f"{http}/v1/generations", json=body, timeout=60)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    assert error["message"]


def test_lookup_of_an_unknown_request_is_404(http: str) -> None:
    reply = httpx.get(f"{http}/v1/generations/no-such-request", timeout=30)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "NOT_FOUND"


def test_openai_client_gets_images(http: str) -> None:
    client = openai.OpenAI(base_url=f"{http}/v1", api_key="not-checked", max_retries=0,
                           timeout=300)
    response = client.images.generate(prompt="a lighthouse", n=2, size="64x64",
                                      response_format="b64_json")
    assert len(response.data) == 2
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json or ""))) for d in response.data]
    assert all(i.size == (64, 64) for i in images)
    assert images[0].tobytes() != images[1].tobytes()  # seeds seed and seed + 1


def test_openai_client_sees_field_errors(http: str) -> None:
    client = openai.OpenAI(base_url=f"{http}/v1", api_key="not-checked", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a lighthouse", size="big")
    assert caught.value.body["param"] == "size"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.images.generate(prompt="a lighthouse", response_format="url")


def test_the_json_body_covers_every_sdk_parameter() -> None:
    assert set(GenerateBody.model_fields) - {"prompt"} == set(
        typing.get_type_hints(GenerateParams))


def test_queue_depth_of_a_node_reads_the_fleet_state(http: str, fleet: Any) -> None:
    """The route KEDA's metrics-api trigger polls: the controller's own reading of Redis."""
    from services.common.fleet_state import FleetState

    state = FleetState.from_url(fleet.redis_url)
    node = "vae:keda-test-model"
    assert httpx.get(f"{http}/v1/queue-depth/{node}", timeout=30).json()["depth"] == 0
    state.add_depth("vae", "keda-test-model", 3)
    try:
        found = httpx.get(f"{http}/v1/queue-depth/{node}", timeout=30).json()
        assert found == {"node": node, "depth": state.depths()[node]} and found["depth"] >= 3
    finally:
        state.add_depth("vae", "keda-test-model", -3)
    bad = httpx.get(f"{http}/v1/queue-depth/nonsense", timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "node"
