from diffusion.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArEmbedRequest(_message.Message):
    __slots__ = ("request_id", "model", "prompt", "peer")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    prompt: str
    peer: _tensor_pb2.PeerInfo
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., peer: _Optional[_Union[_tensor_pb2.PeerInfo, _Mapping]] = ...) -> None: ...

class ArEmbedResponse(_message.Message):
    __slots__ = ("embeddings",)
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _tensor_pb2.TensorRef
    def __init__(self, embeddings: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ...) -> None: ...

class EmbedAdaptRequest(_message.Message):
    __slots__ = ("request_id", "adapter", "embeddings", "peer")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    adapter: str
    embeddings: _tensor_pb2.TensorRef
    peer: _tensor_pb2.PeerInfo
    def __init__(self, request_id: _Optional[str] = ..., adapter: _Optional[str] = ..., embeddings: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., peer: _Optional[_Union[_tensor_pb2.PeerInfo, _Mapping]] = ...) -> None: ...

class EmbedAdaptResponse(_message.Message):
    __slots__ = ("embeddings",)
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _tensor_pb2.TensorRef
    def __init__(self, embeddings: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ...) -> None: ...
