"""The values a spec fixes itself, checked at registration as a run would check them: a spec
that every run would refuse is refused when registered.

Each input default is checked on its own (its type, a finite number, a decodable image, the
length of a text), as Generate checks a given input. Then a run is bound (:func:`.binding.bind`,
Generate's checks) with every input given a stand-in that no check refuses (the default of the
port it feeds, else empty text, 0, a small blank image): what it still refuses is a literal of
the spec, raised with the spec's field (``spec.nodes[i].inputs.PORT``, ``...controlnets[j]``).
A refusal that names a stand-in is dropped, and so is a fixed mask's size against an image
that is not known yet.
"""

from __future__ import annotations

import io
from typing import Any

import PIL.Image

from diffusion.v1 import gateway_pb2, workflow_pb2
from services.common.errors import FleetError
from services.common.model_store import ModelStore
from services.gateway.attachments import AttachmentKinds
from services.gateway.settings import GatewaySettings
from services.gateway.workflows import catalog
from services.gateway.workflows.binding import bind, input_value
from services.gateway.workflows.registry import Registered
from services.gateway.workflows.spec import FromInput, ValueType, Workflow

STAND_IN_SIDE = 64


def _blank_png() -> bytes:
    out = io.BytesIO()
    PIL.Image.new("RGB", (STAND_IN_SIDE, STAND_IN_SIDE), "white").save(out, format="PNG")
    return out.getvalue()


def _port_default(workflow: Workflow, name: str) -> Any:
    """The catalog's default of the first port the input feeds (None if it has none)."""
    for node in workflow.nodes:
        for port, binding in node.inputs.items():
            if isinstance(binding, FromInput) and binding.name == name:
                found = catalog.OPERATORS[node.operator].port(port)
                return None if found is None else found.default
    return None


def _stand_in(workflow: Workflow, name: str, value_type: ValueType
              ) -> workflow_pb2.WorkflowValue:
    if value_type in (ValueType.IMAGE, ValueType.MASK):
        return workflow_pb2.WorkflowValue(image=_blank_png())
    default = _port_default(workflow, name)
    if value_type == ValueType.INT:
        return workflow_pb2.WorkflowValue(integer=default if isinstance(default, int) else 0)
    if value_type == ValueType.FLOAT:
        return workflow_pb2.WorkflowValue(
            number=float(default) if isinstance(default, int | float) else 0.0)
    return workflow_pb2.WorkflowValue(text=default if isinstance(default, str) else "")


def _spec_field(workflow: Workflow, field: str, root: str) -> str | None:
    """The spec's field a run's error names, or None when it names an input (a stand-in)."""
    if field.startswith("inputs."):
        return None
    if field.startswith("workflow.nodes."):
        node_id, _, rest = field.removeprefix("workflow.nodes.").partition(".")
        index = next(i for i, n in enumerate(workflow.nodes) if n.id == node_id)
        return f"{root}.nodes[{index}]" + (f".{rest}" if rest else "")
    return f"{root}.{field}" if field else root


def check_values(registered: Registered, store: ModelStore, settings: GatewaySettings,
                 attachments: AttachmentKinds, root: str = "spec") -> None:
    workflow = registered.workflow
    for i, decl in enumerate(workflow.inputs):
        if decl.default is not None:
            try:
                input_value(decl, None, settings)
            except FleetError as exc:
                raise type(exc)(exc.message, field=f"{root}.inputs[{i}].default_value") from exc
    request = gateway_pb2.GenerateRequest(workflow_id=registered.workflow_id)
    for decl in workflow.inputs:
        request.inputs[decl.name].CopyFrom(_stand_in(workflow, decl.name, decl.type))
    try:
        bind(request, registered, store, settings, attachments, "registration-check")
    except FleetError as exc:
        field = _spec_field(workflow, exc.field, root)
        if field is None or exc.message.startswith("mask is "):
            return
        raise type(exc)(exc.message, field=field) from exc
