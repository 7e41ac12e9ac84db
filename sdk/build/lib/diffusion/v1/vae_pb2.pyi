from diffusion.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VaeEncodeRequest(_message.Message):
    __slots__ = ("request_id", "model", "image", "peer")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    image: _tensor_pb2.TensorRef
    peer: _tensor_pb2.PeerInfo
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., image: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., peer: _Optional[_Union[_tensor_pb2.PeerInfo, _Mapping]] = ...) -> None: ...

class VaeEncodeResponse(_message.Message):
    __slots__ = ("moments",)
    MOMENTS_FIELD_NUMBER: _ClassVar[int]
    moments: _tensor_pb2.TensorRef
    def __init__(self, moments: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ...) -> None: ...

class VaeDecodeRequest(_message.Message):
    __slots__ = ("request_id", "model", "latents", "peer")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    latents: _tensor_pb2.TensorRef
    peer: _tensor_pb2.PeerInfo
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., latents: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., peer: _Optional[_Union[_tensor_pb2.PeerInfo, _Mapping]] = ...) -> None: ...

class VaeDecodeResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: _tensor_pb2.TensorRef
    def __init__(self, image: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ...) -> None: ...
