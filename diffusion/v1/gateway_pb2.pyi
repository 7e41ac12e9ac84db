from diffusion.v1 import tensor_pb2 as _tensor_pb2
from diffusion.v1 import workflow_pb2 as _workflow_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RequestState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_STATE_UNSPECIFIED: _ClassVar[RequestState]
    REQUEST_STATE_QUEUED: _ClassVar[RequestState]
    REQUEST_STATE_RUNNING: _ClassVar[RequestState]
    REQUEST_STATE_SUCCEEDED: _ClassVar[RequestState]
    REQUEST_STATE_FAILED: _ClassVar[RequestState]
    REQUEST_STATE_CANCELLED: _ClassVar[RequestState]
REQUEST_STATE_UNSPECIFIED: RequestState
REQUEST_STATE_QUEUED: RequestState
REQUEST_STATE_RUNNING: RequestState
REQUEST_STATE_SUCCEEDED: RequestState
REQUEST_STATE_FAILED: RequestState
REQUEST_STATE_CANCELLED: RequestState

class ImageInput(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ControlNetInput(_message.Message):
    __slots__ = ("name", "image", "scale", "guidance_start", "guidance_end")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_START_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_END_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: ImageInput
    scale: float
    guidance_start: float
    guidance_end: float
    def __init__(self, name: _Optional[str] = ..., image: _Optional[_Union[ImageInput, _Mapping]] = ..., scale: _Optional[float] = ..., guidance_start: _Optional[float] = ..., guidance_end: _Optional[float] = ...) -> None: ...

class IpAdapterInput(_message.Message):
    __slots__ = ("name", "image", "scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: ImageInput
    scale: float
    def __init__(self, name: _Optional[str] = ..., image: _Optional[_Union[ImageInput, _Mapping]] = ..., scale: _Optional[float] = ...) -> None: ...

class LoraInput(_message.Message):
    __slots__ = ("name", "scale", "text_encoder_scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    TEXT_ENCODER_SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    scale: float
    text_encoder_scale: float
    def __init__(self, name: _Optional[str] = ..., scale: _Optional[float] = ..., text_encoder_scale: _Optional[float] = ...) -> None: ...

class Approximations(_message.Message):
    __slots__ = ("lora_async_steps", "stale_controlnet", "activation_cache", "cfg_parallel")
    LORA_ASYNC_STEPS_FIELD_NUMBER: _ClassVar[int]
    STALE_CONTROLNET_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_CACHE_FIELD_NUMBER: _ClassVar[int]
    CFG_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    lora_async_steps: int
    stale_controlnet: bool
    activation_cache: bool
    cfg_parallel: bool
    def __init__(self, lora_async_steps: _Optional[int] = ..., stale_controlnet: _Optional[bool] = ..., activation_cache: _Optional[bool] = ..., cfg_parallel: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "model", "prompt", "negative_prompt", "width", "height", "num_inference_steps", "guidance_scale", "has_guidance_scale", "seed", "controlnets", "loras", "image", "mask", "strength", "preview", "approximations", "template_id", "return_pixels", "scheduler", "num_images", "ip_adapters", "workflow_id", "inputs", "priority", "quality")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _workflow_pb2.WorkflowValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_workflow_pb2.WorkflowValue, _Mapping]] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    NUM_INFERENCE_STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    HAS_GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONTROLNETS_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    APPROXIMATIONS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    RETURN_PIXELS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    IP_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    has_guidance_scale: bool
    seed: int
    controlnets: _containers.RepeatedCompositeFieldContainer[ControlNetInput]
    loras: _containers.RepeatedCompositeFieldContainer[LoraInput]
    image: ImageInput
    mask: ImageInput
    strength: float
    preview: bool
    approximations: Approximations
    template_id: str
    return_pixels: bool
    scheduler: str
    num_images: int
    ip_adapters: _containers.RepeatedCompositeFieldContainer[IpAdapterInput]
    workflow_id: str
    inputs: _containers.MessageMap[str, _workflow_pb2.WorkflowValue]
    priority: int
    quality: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., num_inference_steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., has_guidance_scale: _Optional[bool] = ..., seed: _Optional[int] = ..., controlnets: _Optional[_Iterable[_Union[ControlNetInput, _Mapping]]] = ..., loras: _Optional[_Iterable[_Union[LoraInput, _Mapping]]] = ..., image: _Optional[_Union[ImageInput, _Mapping]] = ..., mask: _Optional[_Union[ImageInput, _Mapping]] = ..., strength: _Optional[float] = ..., preview: _Optional[bool] = ..., approximations: _Optional[_Union[Approximations, _Mapping]] = ..., template_id: _Optional[str] = ..., return_pixels: _Optional[bool] = ..., scheduler: _Optional[str] = ..., num_images: _Optional[int] = ..., ip_adapters: _Optional[_Iterable[_Union[IpAdapterInput, _Mapping]]] = ..., workflow_id: _Optional[str] = ..., inputs: _Optional[_Mapping[str, _workflow_pb2.WorkflowValue]] = ..., priority: _Optional[int] = ..., quality: _Optional[str] = ...) -> None: ...

class Queued(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total_steps", "preview")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    preview: ImageInput
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., preview: _Optional[_Union[ImageInput, _Mapping]] = ...) -> None: ...

class GeneratedImage(_message.Message):
    __slots__ = ("image", "pixels", "seed", "output")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    image: ImageInput
    pixels: _tensor_pb2.TensorRef
    seed: int
    output: str
    def __init__(self, image: _Optional[_Union[ImageInput, _Mapping]] = ..., pixels: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., seed: _Optional[int] = ..., output: _Optional[str] = ...) -> None: ...

class GenerateResult(_message.Message):
    __slots__ = ("image", "pixels", "metadata", "latency_ms", "images")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    image: ImageInput
    pixels: _tensor_pb2.TensorRef
    metadata: _containers.ScalarMap[str, str]
    latency_ms: float
    images: _containers.RepeatedCompositeFieldContainer[GeneratedImage]
    def __init__(self, image: _Optional[_Union[ImageInput, _Mapping]] = ..., pixels: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., latency_ms: _Optional[float] = ..., images: _Optional[_Iterable[_Union[GeneratedImage, _Mapping]]] = ...) -> None: ...

class ErrorInfo(_message.Message):
    __slots__ = ("code", "message", "field")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    field: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("request_id", "queued", "progress", "result", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    queued: Queued
    progress: Progress
    result: GenerateResult
    error: ErrorInfo
    def __init__(self, request_id: _Optional[str] = ..., queued: _Optional[_Union[Queued, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[GenerateResult, _Mapping]] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    def __init__(self, cancelled: _Optional[bool] = ...) -> None: ...

class GetRequestRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class GetRequestResponse(_message.Message):
    __slots__ = ("request_id", "state", "step", "total_steps", "result", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    state: RequestState
    step: int
    total_steps: int
    result: GenerateResult
    error: ErrorInfo
    def __init__(self, request_id: _Optional[str] = ..., state: _Optional[_Union[RequestState, str]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., result: _Optional[_Union[GenerateResult, _Mapping]] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "kind", "default_width", "default_height", "schedulers", "default_scheduler", "family", "addons", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ADDONS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    default_width: int
    default_height: int
    schedulers: _containers.RepeatedScalarFieldContainer[str]
    default_scheduler: str
    family: str
    addons: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., default_width: _Optional[int] = ..., default_height: _Optional[int] = ..., schedulers: _Optional[_Iterable[str]] = ..., default_scheduler: _Optional[str] = ..., family: _Optional[str] = ..., addons: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class RegisterTemplateRequest(_message.Message):
    __slots__ = ("request_id", "model", "image", "prompt", "warm_up", "seed", "num_inference_steps", "guidance_scale", "has_guidance_scale")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    WARM_UP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_INFERENCE_STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    HAS_GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    image: ImageInput
    prompt: str
    warm_up: bool
    seed: int
    num_inference_steps: int
    guidance_scale: float
    has_guidance_scale: bool
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., image: _Optional[_Union[ImageInput, _Mapping]] = ..., prompt: _Optional[str] = ..., warm_up: _Optional[bool] = ..., seed: _Optional[int] = ..., num_inference_steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., has_guidance_scale: _Optional[bool] = ...) -> None: ...

class RegisterTemplateResponse(_message.Message):
    __slots__ = ("template_id", "cache_bytes")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    cache_bytes: int
    def __init__(self, template_id: _Optional[str] = ..., cache_bytes: _Optional[int] = ...) -> None: ...
