from diffusion.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ControlNetOpen(_message.Message):
    __slots__ = ("controlnet", "cond_image", "prompt_embeds", "peer", "ring", "added_cond", "shared")
    class AddedCondEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.TensorRef
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ...) -> None: ...
    class SharedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.TensorRef
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ...) -> None: ...
    CONTROLNET_FIELD_NUMBER: _ClassVar[int]
    COND_IMAGE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_EMBEDS_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    ADDED_COND_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    controlnet: str
    cond_image: _tensor_pb2.TensorRef
    prompt_embeds: _tensor_pb2.TensorRef
    peer: _tensor_pb2.PeerInfo
    ring: _tensor_pb2.RingOffer
    added_cond: _containers.MessageMap[str, _tensor_pb2.TensorRef]
    shared: _containers.MessageMap[str, _tensor_pb2.TensorRef]
    def __init__(self, controlnet: _Optional[str] = ..., cond_image: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., prompt_embeds: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., peer: _Optional[_Union[_tensor_pb2.PeerInfo, _Mapping]] = ..., ring: _Optional[_Union[_tensor_pb2.RingOffer, _Mapping]] = ..., added_cond: _Optional[_Mapping[str, _tensor_pb2.TensorRef]] = ..., shared: _Optional[_Mapping[str, _tensor_pb2.TensorRef]] = ...) -> None: ...

class ControlNetStep(_message.Message):
    __slots__ = ("step", "latents", "timestep", "conditioning_scale", "release_lease_ids")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    TIMESTEP_FIELD_NUMBER: _ClassVar[int]
    CONDITIONING_SCALE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_LEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    step: int
    latents: _tensor_pb2.TensorRef
    timestep: float
    conditioning_scale: float
    release_lease_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, step: _Optional[int] = ..., latents: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., timestep: _Optional[float] = ..., conditioning_scale: _Optional[float] = ..., release_lease_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ControlNetStepRequest(_message.Message):
    __slots__ = ("request_id", "open", "step")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    open: ControlNetOpen
    step: ControlNetStep
    def __init__(self, request_id: _Optional[str] = ..., open: _Optional[_Union[ControlNetOpen, _Mapping]] = ..., step: _Optional[_Union[ControlNetStep, _Mapping]] = ...) -> None: ...

class ControlNetStepResponse(_message.Message):
    __slots__ = ("step", "down_residuals", "mid_residual", "single_block_residuals", "compute_ms", "release_lease_ids", "ring")
    STEP_FIELD_NUMBER: _ClassVar[int]
    DOWN_RESIDUALS_FIELD_NUMBER: _ClassVar[int]
    MID_RESIDUAL_FIELD_NUMBER: _ClassVar[int]
    SINGLE_BLOCK_RESIDUALS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_LEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    step: int
    down_residuals: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorRef]
    mid_residual: _tensor_pb2.TensorRef
    single_block_residuals: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorRef]
    compute_ms: float
    release_lease_ids: _containers.RepeatedScalarFieldContainer[str]
    ring: _tensor_pb2.RingAnswer
    def __init__(self, step: _Optional[int] = ..., down_residuals: _Optional[_Iterable[_Union[_tensor_pb2.TensorRef, _Mapping]]] = ..., mid_residual: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., single_block_residuals: _Optional[_Iterable[_Union[_tensor_pb2.TensorRef, _Mapping]]] = ..., compute_ms: _Optional[float] = ..., release_lease_ids: _Optional[_Iterable[str]] = ..., ring: _Optional[_Union[_tensor_pb2.RingAnswer, _Mapping]] = ...) -> None: ...
