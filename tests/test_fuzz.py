"""Fuzzing every gRPC method of the fleet (gateway and each internal service) on a live fleet.

Per method, seeded: random bytes, and mutations (bytes flipped, cut, inserted, repeated)
of a well-formed message filled with plausible values, sent raw so nothing on the client
side cleans them. Streaming methods get a short stream of such messages. Every call must
end with a status that means something to the caller, never INTERNAL or UNKNOWN; bytes
that do not decode are INVALID_ARGUMENT; afterwards every process is alive and serving,
and a normal request still gets its image.
"""

from __future__ import annotations

import random
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

import dfleet
from diffusion.v1 import (
    ar_embed_pb2,
    controlnet_pb2,
    denoiser_pb2,
    gateway_pb2,
    image_encoder_pb2,
    lora_cache_pb2,
    tensor_pb2,
    text_encoder_pb2,
    vae_pb2,
)

SERVICES = {  # role -> services it serves (besides health)
    "gateway": [gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]],
    "text_encoder": [text_encoder_pb2.DESCRIPTOR.services_by_name["TextEncoder"]],
    "image_encoder": [image_encoder_pb2.DESCRIPTOR.services_by_name["ImageEncoder"]],
    "ar_embed": [ar_embed_pb2.DESCRIPTOR.services_by_name["ArEmbed"]],
    "denoiser": [denoiser_pb2.DESCRIPTOR.services_by_name["Denoiser"]],
    "controlnet": [controlnet_pb2.DESCRIPTOR.services_by_name["ControlNet"]],
    "vae": [vae_pb2.DESCRIPTOR.services_by_name["Vae"]],
    "lora_cache": [lora_cache_pb2.DESCRIPTOR.services_by_name["LoraCache"]],
}
LEASES = tensor_pb2.DESCRIPTOR.services_by_name["TensorLeases"]
MEANINGFUL = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE,
              grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE}
RANDOM_CASES = 12
MUTATED_CASES = 24
CALL_TIMEOUT_S = 8.0
PLAUSIBLE = {"model": "tiny-sd", "name": "tiny-cn-a", "controlnet": "tiny-cn-a",
             "lora": "tiny-lora-r4", "prompt": "a fuzzed cat", "dtype": 1}


def _fill(message: Message, rng: random.Random, depth: int = 0) -> Message:
    """Every field set to something plausible (a size, a known model name, ...)."""
    for field in message.DESCRIPTOR.fields:
        repeated = field.is_repeated
        if field.message_type is not None:
            if depth >= 3 or field.message_type.GetOptions().map_entry:
                continue
            if repeated:
                _fill(getattr(message, field.name).add(), rng, depth + 1)
            else:
                _fill(getattr(message, field.name), rng, depth + 1)
            continue
        value = _value(field, rng)
        if repeated:
            getattr(message, field.name).append(value)
        else:
            setattr(message, field.name, value)
    return message


def _value(field: descriptor.FieldDescriptor, rng: random.Random) -> Any:
    kind = field.type
    if kind == descriptor.FieldDescriptor.TYPE_STRING:
        return PLAUSIBLE.get(field.name, rng.choice(["tiny-sd", "fuzz-1", "", "x" * 40]))
    if kind == descriptor.FieldDescriptor.TYPE_BYTES:
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 8, 64])))
    if kind == descriptor.FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (descriptor.FieldDescriptor.TYPE_FLOAT, descriptor.FieldDescriptor.TYPE_DOUBLE):
        return rng.choice([0.0, 0.5, 1.0, 7.5, -3.0, 1e30])
    if kind == descriptor.FieldDescriptor.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values])
    if field.cpp_type in (descriptor.FieldDescriptor.CPPTYPE_UINT32,
                          descriptor.FieldDescriptor.CPPTYPE_UINT64):
        return rng.choice([0, 1, 2, 8, 64, 4096])
    return rng.choice([0, 1, 2, 8, 64, -1])


def _mutate(data: bytes, rng: random.Random) -> bytes:
    raw = bytearray(data or b"\x00")
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(raw))
        action = rng.randrange(4)
        if action == 0:
            raw[i] = rng.randrange(256)
        elif action == 1:
            del raw[i:i + rng.randint(1, 8)]
        elif action == 2:
            raw[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            raw[i:i] = raw[i:i + rng.randint(1, 16)]
        if not raw:
            raw = bytearray(b"\xff")
    return bytes(raw)


def _decodes(method: descriptor.MethodDescriptor, data: bytes) -> bool:
    try:
        GetMessageClass(method.input_type).FromString(data)
        return True
    except DecodeError:
        return False


def _call(channel: grpc.Channel, service: descriptor.ServiceDescriptor,
          method: descriptor.MethodDescriptor, payloads: list[bytes]) -> grpc.StatusCode:
    path = f"/{service.full_name}/{method.name}"
    try:
        if method.client_streaming:
            stream = channel.stream_stream(path) if method.server_streaming else \
                channel.stream_unary(path)
            reply = stream(iter(payloads), timeout=CALL_TIMEOUT_S)
        else:
            unary = channel.unary_stream(path) if method.server_streaming else \
                channel.unary_unary(path)
            reply = unary(payloads[0], timeout=CALL_TIMEOUT_S)
        if method.server_streaming:
            for _ in reply:
                pass
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def _cases(method: descriptor.MethodDescriptor, rng: random.Random) -> list[list[bytes]]:
    seed = _fill(GetMessageClass(method.input_type)(), rng).SerializeToString()
    cases = [[bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))]
             for _ in range(RANDOM_CASES)]
    cases += [[_mutate(seed, rng)] for _ in range(MUTATED_CASES)]
    if method.client_streaming:   # a stream: a (mutated) first message, then more
        cases = [c + [_mutate(seed, rng) for _ in range(rng.randint(0, 2))] for c in cases]
    return cases


@pytest.mark.parametrize("role", sorted(SERVICES))
def test_fuzzed_messages_get_meaningful_statuses(fleet: Any, role: str) -> None:
    address = next(s.address for s in fleet.services if s.role == role)
    rng = random.Random(f"fuzz-{role}")
    problems = []
    with grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", 64 << 20)]) as channel:
        for service in [*SERVICES[role], LEASES]:
            for method in service.methods:
                for payloads in _cases(method, rng):
                    code = _call(channel, service, method, payloads)
                    undecodable = not all(_decodes(method, p) for p in payloads)
                    if code not in MEANINGFUL or (
                            undecodable and not method.client_streaming
                            and code != grpc.StatusCode.INVALID_ARGUMENT):
                        problems.append((method.name, code, payloads[0][:40]))
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=30)
    assert not problems, problems[:10]
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert all(s.process.poll() is None for s in fleet.services)


def test_fleet_serves_after_fuzzing(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=120) as client:
        assert client.generate("after the fuzz", steps=2).png.startswith(b"\x89PNG")
