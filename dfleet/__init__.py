"""Client SDK of a diffusion fleet: ``dfleet.Client`` (blocking) and ``dfleet.AsyncClient``."""

from dfleet.async_client import AsyncClient
from dfleet.client import Client
from dfleet.errors import (
                           Cancelled,
                           DeadlineExceeded,
                           FleetError,
                           Internal,
                           InvalidArgument,
                           NotFound,
                           ResourceExhausted,
                           Unavailable,
)
from dfleet.events import (
                           Event,
                           GeneratedImage,
                           ModelInfo,
                           Progress,
                           Queued,
                           RequestState,
                           RequestStatus,
                           Result,
                           Template,
)
from dfleet.inputs import (
    SCHEDULERS,
    Approximations,
    ControlNet,
    GenerateParams,
    IpAdapter,
    Lora,
)
from dfleet.workflow import (
    Input,
    Output,
    Workflow,
    WorkflowControlNet,
    WorkflowIpAdapter,
    WorkflowLora,
    load_spec,
)
from dfleet.workflow_calls import ImportedWorkflow, WorkflowInfo, WorkflowInput

__all__ = [
    "SCHEDULERS",
    "Approximations", "AsyncClient", "Cancelled", "Client", "ControlNet", "DeadlineExceeded",
    "Event", "FleetError", "GenerateParams", "GeneratedImage", "Internal", "InvalidArgument",
    "IpAdapter",
    "Lora", "ModelInfo",
    "NotFound", "Progress", "Queued", "RequestState", "RequestStatus", "ResourceExhausted",
    "Result", "Template", "Unavailable",
    "ImportedWorkflow", "Input", "Output", "Workflow", "WorkflowControlNet", "WorkflowInfo",
    "WorkflowInput", "WorkflowIpAdapter", "WorkflowLora", "load_spec",
]
