"""What RegisterWorkflow checks before it keeps a workflow: every error names the spec's field.

- each node names an operator of the catalog, a model of the kind it takes, a mode it has;
- each input of a node is one of its operator's, bound to a value of a type it accepts (a
  literal, a declared workflow input or another node's output), every required one bound;
- the graph has no cycle, exactly one denoise node, at least one output, and nothing unused
  (every node's outputs and every declared input are read); a tensor output feeds one input;
- the models agree with the denoise node's family (:mod:`.compatibility`).
"""

from __future__ import annotations

from services.common.errors import InvalidArgument
from services.common.model_store import ModelStore
from services.gateway.workflows import catalog
from services.gateway.workflows.compatibility import check_models
from services.gateway.workflows.graph import CycleError, order, readers
from services.gateway.workflows.spec import (
    Binding,
    Const,
    FromInput,
    FromNode,
    Node,
    Operator,
    ValueType,
    Workflow,
)


def check(workflow: Workflow, store: ModelStore, field: str = "spec") -> None:
    index = {n.id: i for i, n in enumerate(workflow.nodes)}
    for i, decl in enumerate(workflow.inputs):
        where = f"{field}.inputs[{i}]"
        if decl.type not in catalog.INPUT_TYPES:
            raise InvalidArgument(f"input {decl.name!r} has type {decl.type}; inputs take "
                                  f"{', '.join(sorted(catalog.INPUT_TYPES))}",
                                  field=f"{where}.type")
        if decl.default is not None and not catalog.accepts(decl.type, decl.default.type):
            raise InvalidArgument(f"the default of {decl.name!r} is {decl.default.type}, not "
                                  f"{decl.type}", field=f"{where}.default_value")
    for i, node in enumerate(workflow.nodes):
        _check_node(workflow, node, store, f"{field}.nodes[{i}]")
    denoise = [n for n in workflow.nodes if n.operator == Operator.DENOISE]
    if len(denoise) != 1:
        raise InvalidArgument(f"a workflow has exactly one denoise node, this one {len(denoise)}",
                              field=f"{field}.nodes")
    try:
        order(workflow)
    except CycleError as exc:
        raise InvalidArgument(f"node {exc.node!r} is on a cycle: it depends on itself",
                              field=f"{field}.nodes[{index[exc.node]}]") from exc
    _check_outputs(workflow, field)
    _check_use(workflow, field)
    check_models(workflow, store, field)


def _check_node(workflow: Workflow, node: Node, store: ModelStore, where: str) -> None:
    op = catalog.OPERATORS[node.operator]
    what = f"node {node.id!r} ({node.operator})"
    if op.model_kinds:
        if not node.model:
            raise InvalidArgument(f"{what} needs a model", field=f"{where}.model")
        store.get(node.model, op.model_kinds, field=f"{where}.model")
    elif node.model:
        raise InvalidArgument(f"{what} takes no model", field=f"{where}.model")
    if node.mode and node.mode not in op.modes:
        raise InvalidArgument(f"{what} has no mode {node.mode!r}; modes: "
                              f"{', '.join(m for m in op.modes if m)}", field=f"{where}.mode")
    for name in node.inputs:
        if op.port(name) is None:
            raise InvalidArgument(f"{what} has no input {name!r}; inputs: "
                                  f"{', '.join(p.name for p in op.inputs)}",
                                  field=f"{where}.inputs.{name}")
    for port in op.inputs:
        binding = node.inputs.get(port.name)
        if binding is None:
            if port.required:
                raise InvalidArgument(f"{what} needs its input {port.name!r}",
                                      field=f"{where}.inputs.{port.name}")
            continue
        _check_binding(workflow, binding, port.type, what, f"{where}.inputs.{port.name}")
    if node.operator != Operator.DENOISE and (node.controlnets or node.ip_adapters or node.loras):
        raise InvalidArgument(f"{what}: only a denoise node has ControlNets, IP-Adapters and "
                              "LoRAs", field=where)
    for i, c in enumerate(node.controlnets):
        _check_binding(workflow, c.image, ValueType.IMAGE, what, f"{where}.controlnets[{i}].image")
    for i, a in enumerate(node.ip_adapters):
        at = f"{where}.ip_adapters[{i}].image_embeds"
        _check_binding(workflow, a.image_embeds, ValueType.IMAGE_EMBEDS, what, at)
        source = workflow.node(a.image_embeds.node)  # type: ignore[union-attr]
        if source.model != a.name:
            raise InvalidArgument(f"IP-Adapter {a.name!r} reads the image embeddings of node "
                                  f"{source.id!r}, which encodes for {source.model!r}", field=at)


def _check_binding(workflow: Workflow, binding: Binding, expected: ValueType, what: str,
                   field: str) -> None:
    if isinstance(binding, Const):
        given = binding.type
    elif isinstance(binding, FromInput):
        decl = next((d for d in workflow.inputs if d.name == binding.name), None)
        if decl is None:
            raise InvalidArgument(f"{what} reads input {binding.name!r}, which the workflow does "
                                  "not declare", field=field)
        given = decl.type
    else:
        given = _output_type(workflow, binding, what, field)
    if not isinstance(binding, FromNode) and expected not in catalog.INPUT_TYPES:
        raise InvalidArgument(f"{what}: a {expected} comes from a node, not a literal or an "
                              "input", field=field)
    if not catalog.accepts(expected, given):
        raise InvalidArgument(f"{what} takes {expected} here, but is given {given}", field=field)


def _output_type(workflow: Workflow, binding: FromNode, what: str, field: str) -> ValueType:
    source = next((n for n in workflow.nodes if n.id == binding.node), None)
    if source is None:
        raise InvalidArgument(f"{what} reads node {binding.node!r}, which does not exist",
                              field=field)
    port = catalog.OPERATORS[source.operator].output(binding.output)
    if port is None:
        outputs = ", ".join(p.name for p in catalog.OPERATORS[source.operator].outputs)
        raise InvalidArgument(f"{what} reads output {binding.output!r} of node {source.id!r}, "
                              f"which has {outputs}", field=field)
    return port.type


def _check_outputs(workflow: Workflow, field: str) -> None:
    if not workflow.outputs:
        raise InvalidArgument("a workflow needs at least one output", field=f"{field}.outputs")
    for i, out in enumerate(workflow.outputs):
        given = _output_type(workflow, out.source, f"output {out.name!r}",
                             f"{field}.outputs[{i}].source")
        if given != ValueType.IMAGE:
            raise InvalidArgument(f"output {out.name!r} is a {given}; outputs are images",
                                  field=f"{field}.outputs[{i}].source")


def _check_use(workflow: Workflow, field: str) -> None:
    """Nothing computed for nothing, and a tensor is read once (its producer lends it to one
    reader)."""
    read = readers(workflow)
    for i, node in enumerate(workflow.nodes):
        for port in catalog.OPERATORS[node.operator].outputs:
            where = read.get((node.id, port.name), [])
            if not where:
                raise InvalidArgument(f"the {port.name} of node {node.id!r} is used by nothing",
                                      field=f"{field}.nodes[{i}]")
            if port.type in catalog.TENSOR_TYPES and len(where) > 1:
                raise InvalidArgument(
                    f"the {port.name} of node {node.id!r} is read {len(where)} times "
                    f"({', '.join(where)}); a {port.type} is read once: add another node "
                    "for the second use", field=f"{field}.nodes[{i}]")
    used = {b.name for n in workflow.nodes for _, b in n.sources() if isinstance(b, FromInput)}
    for i, decl in enumerate(workflow.inputs):
        if decl.name not in used:
            raise InvalidArgument(f"input {decl.name!r} is used by no node",
                                  field=f"{field}.inputs[{i}]")
