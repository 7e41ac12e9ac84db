"""Admission's cost of a workflow's nodes other than the denoise node: each (operator, model)
counts the median of its last measured durations, or its operator's default until measured;
a graph counts the sum of its nodes."""

from __future__ import annotations

from services.gateway.workflows.node_costs import DEFAULT_MS, KEPT, NodeCosts
from services.gateway.workflows.spec import Node, Operator

ENCODE = Node("prompt", Operator.TEXT_ENCODE, "tiny-sd", "prompt")
OTHER_MODEL = Node("prompt", Operator.TEXT_ENCODE, "tiny-sdxl", "prompt")
DECODE = Node("decode", Operator.VAE_DECODE, "tiny-sd")


def test_unmeasured_nodes_count_their_operators_default() -> None:
    costs = NodeCosts()
    assert costs.node_ms(ENCODE) == DEFAULT_MS[Operator.TEXT_ENCODE]
    assert costs.graph_ms([ENCODE, DECODE]) == (DEFAULT_MS[Operator.TEXT_ENCODE]
                                                + DEFAULT_MS[Operator.VAE_DECODE])


def test_measured_nodes_count_the_median_of_their_model_only() -> None:
    costs = NodeCosts()
    for ms in (4.0, 400.0, 6.0):           # one outlier moves a median by nothing
        costs.observe(Operator.TEXT_ENCODE, "tiny-sd", ms)
    assert costs.node_ms(ENCODE) == 6.0
    assert costs.node_ms(OTHER_MODEL) == DEFAULT_MS[Operator.TEXT_ENCODE]
    costs.observe(Operator.VAE_DECODE, "tiny-sd", 30.0)
    assert costs.graph_ms([ENCODE, DECODE]) == 36.0


def test_only_the_last_measurements_count() -> None:
    costs = NodeCosts()
    for _ in range(KEPT):
        costs.observe(Operator.VAE_DECODE, "tiny-sd", 500.0)
    for _ in range(KEPT):
        costs.observe(Operator.VAE_DECODE, "tiny-sd", 20.0)
    assert costs.node_ms(DECODE) == 20.0
