from diffusion.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PrepareLoraRequest(_message.Message):
    __slots__ = ("request_id", "loras")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    loras: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., loras: _Optional[_Iterable[str]] = ...) -> None: ...

class PrepareLoraResponse(_message.Message):
    __slots__ = ("loras",)
    LORAS_FIELD_NUMBER: _ClassVar[int]
    loras: _containers.RepeatedCompositeFieldContainer[LoraStatus]
    def __init__(self, loras: _Optional[_Iterable[_Union[LoraStatus, _Mapping]]] = ...) -> None: ...

class LoraStatus(_message.Message):
    __slots__ = ("name", "nbytes", "hit", "load_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    HIT_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    nbytes: int
    hit: bool
    load_ms: float
    def __init__(self, name: _Optional[str] = ..., nbytes: _Optional[int] = ..., hit: _Optional[bool] = ..., load_ms: _Optional[float] = ...) -> None: ...

class FetchLoraRequest(_message.Message):
    __slots__ = ("request_id", "lora", "peer")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    lora: str
    peer: _tensor_pb2.PeerInfo
    def __init__(self, request_id: _Optional[str] = ..., lora: _Optional[str] = ..., peer: _Optional[_Union[_tensor_pb2.PeerInfo, _Mapping]] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: _tensor_pb2.TensorRef
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ...) -> None: ...

class FetchLoraResponse(_message.Message):
    __slots__ = ("tensors", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...
