from diffusion.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageEncodeRequest(_message.Message):
    __slots__ = ("request_id", "ip_adapter", "image", "peer")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IP_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ip_adapter: str
    image: bytes
    peer: _tensor_pb2.PeerInfo
    def __init__(self, request_id: _Optional[str] = ..., ip_adapter: _Optional[str] = ..., image: _Optional[bytes] = ..., peer: _Optional[_Union[_tensor_pb2.PeerInfo, _Mapping]] = ...) -> None: ...

class ImageEncodeResponse(_message.Message):
    __slots__ = ("image_embeds",)
    IMAGE_EMBEDS_FIELD_NUMBER: _ClassVar[int]
    image_embeds: _tensor_pb2.TensorRef
    def __init__(self, image_embeds: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ...) -> None: ...
