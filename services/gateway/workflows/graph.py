"""Graph questions about a workflow: dependency order, who reads each output, which nodes
come before and after its denoise node."""

from __future__ import annotations

from collections import defaultdict

from services.gateway.workflows.spec import FromNode, Node, Operator, Workflow


class CycleError(ValueError):
    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.node = node


def order(workflow: Workflow) -> list[Node]:
    """The nodes in dependency order (each after every node it reads), ties in spec order;
    CycleError names a node on a cycle (or reading a node that does not exist)."""
    known = {n.id: n for n in workflow.nodes}
    done: list[Node] = []
    placed: set[str] = set()
    waiting = list(workflow.nodes)
    while waiting:
        ready = [n for n in waiting if n.upstream() <= placed]
        if not ready:
            stuck = next((n for n in waiting if n.upstream() - set(known)), waiting[0])
            raise CycleError(stuck.id)
        for node in ready:
            done.append(node)
            placed.add(node.id)
        waiting = [n for n in waiting if n.id not in placed]
    return done


def readers(workflow: Workflow) -> dict[tuple[str, str], list[str]]:
    """(node, output) -> where it is read: ``node.where`` of each input, ``outputs.name``."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for node in workflow.nodes:
        for where, binding in node.sources():
            if isinstance(binding, FromNode):
                found[(binding.node, binding.output)].append(f"{node.id}.{where}")
    for out in workflow.outputs:
        found[(out.source.node, out.source.output)].append(f"outputs.{out.name}")
    return found


def ancestors(workflow: Workflow, node_id: str) -> set[str]:
    """Every node ``node_id`` reads, directly or not."""
    by_id = {n.id: n for n in workflow.nodes}
    seen: set[str] = set()
    todo = list(by_id[node_id].upstream())
    while todo:
        current = todo.pop()
        if current in seen or current not in by_id:
            continue
        seen.add(current)
        todo.extend(by_id[current].upstream())
    return seen


def before_denoise(workflow: Workflow) -> set[str]:
    """The nodes the denoise node waits for (the others come after it)."""
    denoise = next((n for n in workflow.nodes if n.operator == Operator.DENOISE), None)
    return ancestors(workflow, denoise.id) if denoise is not None else set()
