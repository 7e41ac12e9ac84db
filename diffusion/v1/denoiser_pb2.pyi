from diffusion.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ControlNetAttachment(_message.Message):
    __slots__ = ("name", "address", "cond_image", "scale", "guidance_start", "guidance_end", "peer", "cond_moments")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    COND_IMAGE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_START_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_END_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    COND_MOMENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    cond_image: _tensor_pb2.TensorRef
    scale: float
    guidance_start: float
    guidance_end: float
    peer: _tensor_pb2.PeerInfo
    cond_moments: _tensor_pb2.TensorRef
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., cond_image: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., scale: _Optional[float] = ..., guidance_start: _Optional[float] = ..., guidance_end: _Optional[float] = ..., peer: _Optional[_Union[_tensor_pb2.PeerInfo, _Mapping]] = ..., cond_moments: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ...) -> None: ...

class LoraAttachment(_message.Message):
    __slots__ = ("name", "scale", "address")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    scale: float
    address: str
    def __init__(self, name: _Optional[str] = ..., scale: _Optional[float] = ..., address: _Optional[str] = ...) -> None: ...

class DenoiseRequest(_message.Message):
    __slots__ = ("request_id", "model", "width", "height", "num_inference_steps", "guidance_scale", "seed", "strength", "image_moments", "mask", "masked_image_moments", "peer", "scheduler", "num_images", "conditioning", "negative_conditioning", "priority", "addons")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    NUM_INFERENCE_STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MOMENTS_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    MASKED_IMAGE_MOMENTS_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    CONDITIONING_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_CONDITIONING_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ADDONS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    strength: float
    image_moments: _tensor_pb2.TensorRef
    mask: _tensor_pb2.TensorRef
    masked_image_moments: _tensor_pb2.TensorRef
    peer: _tensor_pb2.PeerInfo
    scheduler: str
    num_images: int
    conditioning: _tensor_pb2.Conditioning
    negative_conditioning: _tensor_pb2.Conditioning
    priority: int
    addons: Addons
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., num_inference_steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., seed: _Optional[int] = ..., strength: _Optional[float] = ..., image_moments: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., mask: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., masked_image_moments: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., peer: _Optional[_Union[_tensor_pb2.PeerInfo, _Mapping]] = ..., scheduler: _Optional[str] = ..., num_images: _Optional[int] = ..., conditioning: _Optional[_Union[_tensor_pb2.Conditioning, _Mapping]] = ..., negative_conditioning: _Optional[_Union[_tensor_pb2.Conditioning, _Mapping]] = ..., priority: _Optional[int] = ..., addons: _Optional[_Union[Addons, _Mapping]] = ...) -> None: ...

class Addons(_message.Message):
    __slots__ = ("lora", "controlnet", "cfg_partner", "template_edit", "preview", "ip_adapter")
    LORA_FIELD_NUMBER: _ClassVar[int]
    CONTROLNET_FIELD_NUMBER: _ClassVar[int]
    CFG_PARTNER_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_EDIT_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    IP_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    lora: LoraPatch
    controlnet: ControlNets
    cfg_partner: CfgPartner
    template_edit: TemplateEditSpec
    preview: Preview
    ip_adapter: IpAdapters
    def __init__(self, lora: _Optional[_Union[LoraPatch, _Mapping]] = ..., controlnet: _Optional[_Union[ControlNets, _Mapping]] = ..., cfg_partner: _Optional[_Union[CfgPartner, _Mapping]] = ..., template_edit: _Optional[_Union[TemplateEditSpec, _Mapping]] = ..., preview: _Optional[_Union[Preview, _Mapping]] = ..., ip_adapter: _Optional[_Union[IpAdapters, _Mapping]] = ...) -> None: ...

class IpAdapters(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[IpAdapterAttachment]
    def __init__(self, adapters: _Optional[_Iterable[_Union[IpAdapterAttachment, _Mapping]]] = ...) -> None: ...

class IpAdapterAttachment(_message.Message):
    __slots__ = ("name", "scale", "image_embeds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_EMBEDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    scale: float
    image_embeds: _tensor_pb2.TensorRef
    def __init__(self, name: _Optional[str] = ..., scale: _Optional[float] = ..., image_embeds: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ...) -> None: ...

class LoraPatch(_message.Message):
    __slots__ = ("loras", "async_steps")
    LORAS_FIELD_NUMBER: _ClassVar[int]
    ASYNC_STEPS_FIELD_NUMBER: _ClassVar[int]
    loras: _containers.RepeatedCompositeFieldContainer[LoraAttachment]
    async_steps: int
    def __init__(self, loras: _Optional[_Iterable[_Union[LoraAttachment, _Mapping]]] = ..., async_steps: _Optional[int] = ...) -> None: ...

class ControlNets(_message.Message):
    __slots__ = ("controlnets", "stale")
    CONTROLNETS_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    controlnets: _containers.RepeatedCompositeFieldContainer[ControlNetAttachment]
    stale: bool
    def __init__(self, controlnets: _Optional[_Iterable[_Union[ControlNetAttachment, _Mapping]]] = ..., stale: _Optional[bool] = ...) -> None: ...

class Preview(_message.Message):
    __slots__ = ("every",)
    EVERY_FIELD_NUMBER: _ClassVar[int]
    every: int
    def __init__(self, every: _Optional[int] = ...) -> None: ...

class TemplateEditSpec(_message.Message):
    __slots__ = ("template_id", "activation_cache", "record", "image_moments", "conditioning", "negative_conditioning")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_CACHE_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MOMENTS_FIELD_NUMBER: _ClassVar[int]
    CONDITIONING_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_CONDITIONING_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    activation_cache: bool
    record: bool
    image_moments: _tensor_pb2.TensorRef
    conditioning: _tensor_pb2.Conditioning
    negative_conditioning: _tensor_pb2.Conditioning
    def __init__(self, template_id: _Optional[str] = ..., activation_cache: _Optional[bool] = ..., record: _Optional[bool] = ..., image_moments: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., conditioning: _Optional[_Union[_tensor_pb2.Conditioning, _Mapping]] = ..., negative_conditioning: _Optional[_Union[_tensor_pb2.Conditioning, _Mapping]] = ...) -> None: ...

class CfgPartner(_message.Message):
    __slots__ = ("address", "peer")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    address: str
    peer: _tensor_pb2.PeerInfo
    def __init__(self, address: _Optional[str] = ..., peer: _Optional[_Union[_tensor_pb2.PeerInfo, _Mapping]] = ...) -> None: ...

class DenoiseProgress(_message.Message):
    __slots__ = ("step", "total_steps", "preview_latents")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_LATENTS_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    preview_latents: _tensor_pb2.TensorRef
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., preview_latents: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ...) -> None: ...

class DenoiseResult(_message.Message):
    __slots__ = ("latents", "steps", "queue_ms", "run_ms", "batch_peak", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    RUN_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_PEAK_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    latents: _tensor_pb2.TensorRef
    steps: int
    queue_ms: float
    run_ms: float
    batch_peak: int
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, latents: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., steps: _Optional[int] = ..., queue_ms: _Optional[float] = ..., run_ms: _Optional[float] = ..., batch_peak: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DenoiseEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: DenoiseProgress
    result: DenoiseResult
    def __init__(self, progress: _Optional[_Union[DenoiseProgress, _Mapping]] = ..., result: _Optional[_Union[DenoiseResult, _Mapping]] = ...) -> None: ...

class DenoiseCancelRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class DenoiseCancelResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    def __init__(self, cancelled: _Optional[bool] = ...) -> None: ...

class CfgPassOpen(_message.Message):
    __slots__ = ("model", "prompt_embeds", "peer", "total_steps", "addons", "num_images", "added_cond", "ring")
    class AddedCondEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.TensorRef
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_EMBEDS_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    ADDONS_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    ADDED_COND_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt_embeds: _tensor_pb2.TensorRef
    peer: _tensor_pb2.PeerInfo
    total_steps: int
    addons: Addons
    num_images: int
    added_cond: _containers.MessageMap[str, _tensor_pb2.TensorRef]
    ring: _tensor_pb2.RingOffer
    def __init__(self, model: _Optional[str] = ..., prompt_embeds: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., peer: _Optional[_Union[_tensor_pb2.PeerInfo, _Mapping]] = ..., total_steps: _Optional[int] = ..., addons: _Optional[_Union[Addons, _Mapping]] = ..., num_images: _Optional[int] = ..., added_cond: _Optional[_Mapping[str, _tensor_pb2.TensorRef]] = ..., ring: _Optional[_Union[_tensor_pb2.RingOffer, _Mapping]] = ...) -> None: ...

class CfgPassStep(_message.Message):
    __slots__ = ("step", "sample", "timestep", "with_loras", "release_lease_ids")
    STEP_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    TIMESTEP_FIELD_NUMBER: _ClassVar[int]
    WITH_LORAS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_LEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    step: int
    sample: _tensor_pb2.TensorRef
    timestep: float
    with_loras: bool
    release_lease_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, step: _Optional[int] = ..., sample: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., timestep: _Optional[float] = ..., with_loras: _Optional[bool] = ..., release_lease_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CfgPassRequest(_message.Message):
    __slots__ = ("request_id", "open", "step")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    open: CfgPassOpen
    step: CfgPassStep
    def __init__(self, request_id: _Optional[str] = ..., open: _Optional[_Union[CfgPassOpen, _Mapping]] = ..., step: _Optional[_Union[CfgPassStep, _Mapping]] = ...) -> None: ...

class CfgPassResponse(_message.Message):
    __slots__ = ("step", "noise_pred", "release_lease_ids", "ring")
    STEP_FIELD_NUMBER: _ClassVar[int]
    NOISE_PRED_FIELD_NUMBER: _ClassVar[int]
    RELEASE_LEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    step: int
    noise_pred: _tensor_pb2.TensorRef
    release_lease_ids: _containers.RepeatedScalarFieldContainer[str]
    ring: _tensor_pb2.RingAnswer
    def __init__(self, step: _Optional[int] = ..., noise_pred: _Optional[_Union[_tensor_pb2.TensorRef, _Mapping]] = ..., release_lease_ids: _Optional[_Iterable[str]] = ..., ring: _Optional[_Union[_tensor_pb2.RingAnswer, _Mapping]] = ...) -> None: ...
