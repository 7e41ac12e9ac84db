from diffusion.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PromptInput(_message.Message):
    __slots__ = ("text", "zeros")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ZEROS_FIELD_NUMBER: _ClassVar[int]
    text: str
    zeros: bool
    def __init__(self, text: _Optional[str] = ..., zeros: _Optional[bool] = ...) -> None: ...

class TextEncoderLora(_message.Message):
    __slots__ = ("name", "scale", "address")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    scale: float
    address: str
    def __init__(self, name: _Optional[str] = ..., scale: _Optional[float] = ..., address: _Optional[str] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("request_id", "model", "peer", "inputs", "loras")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    peer: _tensor_pb2.PeerInfo
    inputs: _containers.RepeatedCompositeFieldContainer[PromptInput]
    loras: _containers.RepeatedCompositeFieldContainer[TextEncoderLora]
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., peer: _Optional[_Union[_tensor_pb2.PeerInfo, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[PromptInput, _Mapping]]] = ..., loras: _Optional[_Iterable[_Union[TextEncoderLora, _Mapping]]] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("prompts",)
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Conditioning]
    def __init__(self, prompts: _Optional[_Iterable[_Union[_tensor_pb2.Conditioning, _Mapping]]] = ...) -> None: ...
