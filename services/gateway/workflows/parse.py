"""A ``WorkflowSpec`` proto as a :class:`~.spec.Workflow`; errors name the spec's field.

Only the shape is checked here (names, enums, bindings that say where they come from);
what the graph means (types, cycles, models) is :mod:`.checks`'.
"""

from __future__ import annotations

import math
import re

from diffusion.v1 import workflow_pb2
from services.common.errors import InvalidArgument
from services.gateway.workflows import spec as s

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
MAX_NODES = 64
MAX_INPUTS = 64


def _name(value: str, what: str, field: str) -> str:
    if not NAME.fullmatch(value):
        raise InvalidArgument(f"{what} {value!r} is not a name (a letter or _, then up to 63 "
                              "of letters, digits, _ . -)", field=field)
    return value


def _binding(message: workflow_pb2.WorkflowBinding, field: str) -> s.Binding:
    binding = s.binding_from_proto(message)
    if binding is None:
        raise InvalidArgument("give a literal, an input or a node output", field=field)
    if isinstance(binding, s.Const) and isinstance(binding.value, float) \
            and not math.isfinite(binding.value):
        raise InvalidArgument(f"{binding.value} is not a finite number", field=field)
    return binding


def _scale(message: object, name: str, default: float, field: str) -> float:
    if not message.HasField(name):  # type: ignore[attr-defined]
        return default
    value = float(getattr(message, name))
    if not math.isfinite(value):
        raise InvalidArgument(f"{value} is not a finite number", field=f"{field}.{name}")
    return value


def _node(message: workflow_pb2.WorkflowNode, field: str) -> s.Node:
    node_id = _name(message.id, "node id", f"{field}.id")
    operator = s.operator_from_proto(message.operator)
    if operator is None:
        raise InvalidArgument(f"node {node_id!r} names no operator; one of "
                              f"{', '.join(o.value for o in s.Operator)}",
                              field=f"{field}.operator")
    inputs = {name: _binding(b, f"{field}.inputs.{name}")
              for name, b in sorted(message.inputs.items())}
    controlnets = tuple(
        s.ControlNetUse(c.name, _binding(c.image, f"{field}.controlnets[{i}].image"),
                        _scale(c, "scale", 1.0, f"{field}.controlnets[{i}]"),
                        c.guidance_start,
                        _scale(c, "guidance_end", 1.0, f"{field}.controlnets[{i}]"))
        for i, c in enumerate(message.controlnets))
    adapters = tuple(
        s.IpAdapterUse(a.name, _binding(a.image_embeds, f"{field}.ip_adapters[{i}].image_embeds"),
                       _scale(a, "scale", 1.0, f"{field}.ip_adapters[{i}]"))
        for i, a in enumerate(message.ip_adapters))
    loras = tuple(
        s.LoraUse(lo.name, _scale(lo, "scale", 1.0, f"{field}.loras[{i}]"),
                  _scale(lo, "text_encoder_scale", math.nan, f"{field}.loras[{i}]")
                  if lo.HasField("text_encoder_scale") else None)
        for i, lo in enumerate(message.loras))
    return s.Node(node_id, operator, message.model, message.mode, inputs, controlnets,
                  adapters, loras)


def _input(message: workflow_pb2.WorkflowInput, field: str) -> s.InputDecl:
    name = _name(message.name, "input name", f"{field}.name")
    value_type = s.type_from_proto(message.type)
    if value_type is None:
        raise InvalidArgument(f"input {name!r} has no type", field=f"{field}.type")
    default = (s.const_from_proto(message.default_value)
               if message.HasField("default_value") else None)
    return s.InputDecl(name, value_type, default, message.description)


def parse(message: workflow_pb2.WorkflowSpec, field: str = "spec") -> s.Workflow:
    if len(message.nodes) > MAX_NODES:
        raise InvalidArgument(f"at most {MAX_NODES} nodes", field=f"{field}.nodes")
    if len(message.inputs) > MAX_INPUTS:
        raise InvalidArgument(f"at most {MAX_INPUTS} inputs", field=f"{field}.inputs")
    name = _name(message.name, "workflow name", f"{field}.name")
    inputs = tuple(_input(m, f"{field}.inputs[{i}]") for i, m in enumerate(message.inputs))
    nodes = tuple(_node(m, f"{field}.nodes[{i}]") for i, m in enumerate(message.nodes))
    outputs = []
    for i, out in enumerate(message.outputs):
        where = f"{field}.outputs[{i}]"
        outputs.append(s.OutputDecl(_name(out.name, "output name", f"{where}.name"),
                                    s.FromNode(out.source.node, out.source.output)))
    for what, names, path in (("input", [d.name for d in inputs], "inputs"),
                              ("node", [n.id for n in nodes], "nodes"),
                              ("output", [o.name for o in outputs], "outputs")):
        seen: set[str] = set()
        for i, item in enumerate(names):
            if item in seen:
                raise InvalidArgument(f"{what} {item!r} is declared twice",
                                      field=f"{field}.{path}[{i}]")
            seen.add(item)
    return s.Workflow(name, nodes, tuple(outputs), inputs, message.description)
