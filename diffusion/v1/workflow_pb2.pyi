from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ValueType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUE_TYPE_UNSPECIFIED: _ClassVar[ValueType]
    VALUE_TYPE_TEXT: _ClassVar[ValueType]
    VALUE_TYPE_INT: _ClassVar[ValueType]
    VALUE_TYPE_FLOAT: _ClassVar[ValueType]
    VALUE_TYPE_IMAGE: _ClassVar[ValueType]
    VALUE_TYPE_MASK: _ClassVar[ValueType]
    VALUE_TYPE_CONDITIONING: _ClassVar[ValueType]
    VALUE_TYPE_LATENT: _ClassVar[ValueType]
    VALUE_TYPE_DENOISED: _ClassVar[ValueType]
    VALUE_TYPE_EMBEDDINGS: _ClassVar[ValueType]
    VALUE_TYPE_IMAGE_EMBEDS: _ClassVar[ValueType]

class Operator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATOR_UNSPECIFIED: _ClassVar[Operator]
    OPERATOR_TEXT_ENCODE: _ClassVar[Operator]
    OPERATOR_IMAGE_ENCODE: _ClassVar[Operator]
    OPERATOR_VAE_ENCODE: _ClassVar[Operator]
    OPERATOR_VAE_DECODE: _ClassVar[Operator]
    OPERATOR_LATENT_INIT: _ClassVar[Operator]
    OPERATOR_DENOISE: _ClassVar[Operator]
    OPERATOR_AR_EMBED: _ClassVar[Operator]
    OPERATOR_EMBED_ADAPTER: _ClassVar[Operator]

class WorkflowFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKFLOW_FORMAT_UNSPECIFIED: _ClassVar[WorkflowFormat]
    WORKFLOW_FORMAT_COMFYUI_API: _ClassVar[WorkflowFormat]
VALUE_TYPE_UNSPECIFIED: ValueType
VALUE_TYPE_TEXT: ValueType
VALUE_TYPE_INT: ValueType
VALUE_TYPE_FLOAT: ValueType
VALUE_TYPE_IMAGE: ValueType
VALUE_TYPE_MASK: ValueType
VALUE_TYPE_CONDITIONING: ValueType
VALUE_TYPE_LATENT: ValueType
VALUE_TYPE_DENOISED: ValueType
VALUE_TYPE_EMBEDDINGS: ValueType
VALUE_TYPE_IMAGE_EMBEDS: ValueType
OPERATOR_UNSPECIFIED: Operator
OPERATOR_TEXT_ENCODE: Operator
OPERATOR_IMAGE_ENCODE: Operator
OPERATOR_VAE_ENCODE: Operator
OPERATOR_VAE_DECODE: Operator
OPERATOR_LATENT_INIT: Operator
OPERATOR_DENOISE: Operator
OPERATOR_AR_EMBED: Operator
OPERATOR_EMBED_ADAPTER: Operator
WORKFLOW_FORMAT_UNSPECIFIED: WorkflowFormat
WORKFLOW_FORMAT_COMFYUI_API: WorkflowFormat

class WorkflowValue(_message.Message):
    __slots__ = ("text", "integer", "number", "image")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    text: str
    integer: int
    number: float
    image: bytes
    def __init__(self, text: _Optional[str] = ..., integer: _Optional[int] = ..., number: _Optional[float] = ..., image: _Optional[bytes] = ...) -> None: ...

class WorkflowBinding(_message.Message):
    __slots__ = ("literal", "input", "node")
    LITERAL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    literal: WorkflowValue
    input: str
    node: NodeOutputRef
    def __init__(self, literal: _Optional[_Union[WorkflowValue, _Mapping]] = ..., input: _Optional[str] = ..., node: _Optional[_Union[NodeOutputRef, _Mapping]] = ...) -> None: ...

class NodeOutputRef(_message.Message):
    __slots__ = ("node", "output")
    NODE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    node: str
    output: str
    def __init__(self, node: _Optional[str] = ..., output: _Optional[str] = ...) -> None: ...

class WorkflowInput(_message.Message):
    __slots__ = ("name", "type", "default_value", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ValueType
    default_value: WorkflowValue
    description: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ValueType, str]] = ..., default_value: _Optional[_Union[WorkflowValue, _Mapping]] = ..., description: _Optional[str] = ...) -> None: ...

class WorkflowControlNet(_message.Message):
    __slots__ = ("name", "image", "scale", "guidance_start", "guidance_end")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_START_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_END_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: WorkflowBinding
    scale: float
    guidance_start: float
    guidance_end: float
    def __init__(self, name: _Optional[str] = ..., image: _Optional[_Union[WorkflowBinding, _Mapping]] = ..., scale: _Optional[float] = ..., guidance_start: _Optional[float] = ..., guidance_end: _Optional[float] = ...) -> None: ...

class WorkflowIpAdapter(_message.Message):
    __slots__ = ("name", "image_embeds", "scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_EMBEDS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    image_embeds: WorkflowBinding
    scale: float
    def __init__(self, name: _Optional[str] = ..., image_embeds: _Optional[_Union[WorkflowBinding, _Mapping]] = ..., scale: _Optional[float] = ...) -> None: ...

class WorkflowLora(_message.Message):
    __slots__ = ("name", "scale", "text_encoder_scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    TEXT_ENCODER_SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    scale: float
    text_encoder_scale: float
    def __init__(self, name: _Optional[str] = ..., scale: _Optional[float] = ..., text_encoder_scale: _Optional[float] = ...) -> None: ...

class WorkflowNode(_message.Message):
    __slots__ = ("id", "operator", "model", "mode", "inputs", "controlnets", "ip_adapters", "loras")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: WorkflowBinding
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[WorkflowBinding, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    CONTROLNETS_FIELD_NUMBER: _ClassVar[int]
    IP_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    id: str
    operator: Operator
    model: str
    mode: str
    inputs: _containers.MessageMap[str, WorkflowBinding]
    controlnets: _containers.RepeatedCompositeFieldContainer[WorkflowControlNet]
    ip_adapters: _containers.RepeatedCompositeFieldContainer[WorkflowIpAdapter]
    loras: _containers.RepeatedCompositeFieldContainer[WorkflowLora]
    def __init__(self, id: _Optional[str] = ..., operator: _Optional[_Union[Operator, str]] = ..., model: _Optional[str] = ..., mode: _Optional[str] = ..., inputs: _Optional[_Mapping[str, WorkflowBinding]] = ..., controlnets: _Optional[_Iterable[_Union[WorkflowControlNet, _Mapping]]] = ..., ip_adapters: _Optional[_Iterable[_Union[WorkflowIpAdapter, _Mapping]]] = ..., loras: _Optional[_Iterable[_Union[WorkflowLora, _Mapping]]] = ...) -> None: ...

class WorkflowOutput(_message.Message):
    __slots__ = ("name", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: NodeOutputRef
    def __init__(self, name: _Optional[str] = ..., source: _Optional[_Union[NodeOutputRef, _Mapping]] = ...) -> None: ...

class WorkflowSpec(_message.Message):
    __slots__ = ("name", "description", "inputs", "nodes", "outputs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    inputs: _containers.RepeatedCompositeFieldContainer[WorkflowInput]
    nodes: _containers.RepeatedCompositeFieldContainer[WorkflowNode]
    outputs: _containers.RepeatedCompositeFieldContainer[WorkflowOutput]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[WorkflowInput, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[WorkflowNode, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[WorkflowOutput, _Mapping]]] = ...) -> None: ...

class RegisterWorkflowRequest(_message.Message):
    __slots__ = ("request_id", "spec")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    spec: WorkflowSpec
    def __init__(self, request_id: _Optional[str] = ..., spec: _Optional[_Union[WorkflowSpec, _Mapping]] = ...) -> None: ...

class RegisterWorkflowResponse(_message.Message):
    __slots__ = ("workflow_id",)
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    def __init__(self, workflow_id: _Optional[str] = ...) -> None: ...

class ListWorkflowsRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class WorkflowSummary(_message.Message):
    __slots__ = ("workflow_id", "name", "description", "builtin", "inputs")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    name: str
    description: str
    builtin: bool
    inputs: _containers.RepeatedCompositeFieldContainer[WorkflowInput]
    def __init__(self, workflow_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., builtin: _Optional[bool] = ..., inputs: _Optional[_Iterable[_Union[WorkflowInput, _Mapping]]] = ...) -> None: ...

class ListWorkflowsResponse(_message.Message):
    __slots__ = ("workflows",)
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[WorkflowSummary]
    def __init__(self, workflows: _Optional[_Iterable[_Union[WorkflowSummary, _Mapping]]] = ...) -> None: ...

class GetWorkflowRequest(_message.Message):
    __slots__ = ("request_id", "workflow_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    workflow_id: str
    def __init__(self, request_id: _Optional[str] = ..., workflow_id: _Optional[str] = ...) -> None: ...

class GetWorkflowResponse(_message.Message):
    __slots__ = ("workflow_id", "spec", "builtin")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    spec: WorkflowSpec
    builtin: bool
    def __init__(self, workflow_id: _Optional[str] = ..., spec: _Optional[_Union[WorkflowSpec, _Mapping]] = ..., builtin: _Optional[bool] = ...) -> None: ...

class ImportWorkflowRequest(_message.Message):
    __slots__ = ("request_id", "format", "content", "name", "register")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    format: WorkflowFormat
    content: str
    name: str
    register: bool
    def __init__(self, request_id: _Optional[str] = ..., format: _Optional[_Union[WorkflowFormat, str]] = ..., content: _Optional[str] = ..., name: _Optional[str] = ..., register: _Optional[bool] = ...) -> None: ...

class ImportWorkflowResponse(_message.Message):
    __slots__ = ("spec", "workflow_id", "notes")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    spec: WorkflowSpec
    workflow_id: str
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, spec: _Optional[_Union[WorkflowSpec, _Mapping]] = ..., workflow_id: _Optional[str] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...
