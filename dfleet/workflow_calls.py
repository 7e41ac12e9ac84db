"""The workflow calls of the clients: their requests and what they answer, as SDK types."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfleet.workflow import Workflow, literal
from diffusion.v1 import gateway_pb2, workflow_pb2

SpecLike = Workflow | workflow_pb2.WorkflowSpec


@dataclass(frozen=True)
class WorkflowInput:
    name: str
    type: str                     # text, int, float, image, mask
    default: Any = None           # None: required
    description: str = ""


@dataclass(frozen=True)
class WorkflowInfo:
    """A registered workflow: its id (or a built-in's name) is what ``generate`` names."""

    workflow_id: str
    name: str
    description: str
    builtin: bool
    inputs: tuple[WorkflowInput, ...]
    spec: workflow_pb2.WorkflowSpec | None = None   # from ``get_workflow``


@dataclass(frozen=True)
class ImportedWorkflow:
    workflow_id: str                  # empty unless it was registered
    spec: workflow_pb2.WorkflowSpec
    notes: tuple[str, ...]            # where the fleet's meaning differs from the file's

    @property
    def inputs(self) -> tuple[WorkflowInput, ...]:
        return _inputs(self.spec.inputs)


def _value(value: workflow_pb2.WorkflowValue) -> Any:
    kind = value.WhichOneof("kind")
    return getattr(value, kind) if kind else None


def _inputs(inputs: Any) -> tuple[WorkflowInput, ...]:
    return tuple(WorkflowInput(
        i.name, workflow_pb2.ValueType.Name(i.type).removeprefix("VALUE_TYPE_").lower(),
        _value(i.default_value) if i.HasField("default_value") else None, i.description)
        for i in inputs)


def register_request(spec: SpecLike) -> workflow_pb2.RegisterWorkflowRequest:
    return workflow_pb2.RegisterWorkflowRequest(
        spec=spec.spec() if isinstance(spec, Workflow) else spec)


def info_from_summary(summary: workflow_pb2.WorkflowSummary) -> WorkflowInfo:
    return WorkflowInfo(summary.workflow_id, summary.name, summary.description,
                        summary.builtin, _inputs(summary.inputs))


def info_from_get(response: workflow_pb2.GetWorkflowResponse) -> WorkflowInfo:
    spec = response.spec
    return WorkflowInfo(response.workflow_id, spec.name, spec.description, response.builtin,
                        _inputs(spec.inputs), spec)


def import_request(file: str | os.PathLike[str] | None = None, content: str = "",
                   name: str = "", register: bool = True
                   ) -> workflow_pb2.ImportWorkflowRequest:
    """A ComfyUI API-format workflow, from a file or its text (read here, sent as text)."""
    if file is not None:
        content = Path(file).read_text()
        name = name or Path(file).stem
    return workflow_pb2.ImportWorkflowRequest(
        format=workflow_pb2.WORKFLOW_FORMAT_COMFYUI_API, content=content, name=name,
        register=register)


def imported(response: workflow_pb2.ImportWorkflowResponse) -> ImportedWorkflow:
    return ImportedWorkflow(response.workflow_id, response.spec, tuple(response.notes))


def add_workflow_fields(request: gateway_pb2.GenerateRequest, workflow: str,
                        inputs: dict[str, Any] | None) -> None:
    request.workflow_id = workflow
    for name, value in (inputs or {}).items():
        request.inputs[name].CopyFrom(literal(value))
