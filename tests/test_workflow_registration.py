"""Registering workflows (in process: the tiny model folder and a real redis-server, no
services): the built-in request kinds register and keep their content-hash ids; a spec from
the SDK's builder, from its JSON and from its YAML are the same workflow; and every check of
RegisterWorkflow refuses what it should, naming the spec's field: cycles, unknown operators,
inputs and models, type mismatches, a missing required input, two denoise nodes, no output,
unused nodes and inputs, a tensor read twice, text encoders and VAEs of another family, an
inpainting model without an inpaint latent, a ControlNet of another family, and embedding
adapters whose widths do not fit their AR model or their decoder."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

import dfleet
from diffusion.v1 import workflow_pb2
from services.common.errors import FleetError
from services.common.fleet_state import FleetState
from services.common.model_store import ModelStore
from services.gateway.attachments import AttachmentKinds
from services.gateway.attachments.controlnet import ControlNetKind
from services.gateway.attachments.ip_adapter import IpAdapterKind
from services.gateway.attachments.lora import LoraKind
from services.gateway.settings import GatewaySettings
from services.gateway.workflows import builtins
from services.gateway.workflows.registry import WorkflowRegistry
from services.gateway.workflows.service import Workflows
from services.gateway.workflows.spec import to_proto
from tests.workflow_specs import controlled, txt2img


@pytest.fixture(scope="module")
def registry(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[WorkflowRegistry]:
    from dfleet.local_fleet import start_redis

    proc, url = start_redis(tmp_path_factory.mktemp("redis") / "redis.log")
    try:
        yield WorkflowRegistry(FleetState.from_url(url), ModelStore(tiny_models))
    finally:
        proc.kill()
        proc.wait()


def test_builtins_register_with_stable_ids(registry: WorkflowRegistry) -> None:
    made = builtins.builtin_workflows(registry.store, 7.5)
    names = {w.name for w in made}
    assert {"txt2img.tiny-sd", "img2img.tiny-sd", "inpaint.tiny-sd-inpainting",
            "txt2img.tiny-sdxl", "ar_t2i"} <= names
    ids = [registry.register(to_proto(w), builtin=True).workflow_id for w in made]
    again = [registry.register(to_proto(w), builtin=True).workflow_id for w in made]
    assert ids == again and len(set(ids)) == len(ids)
    listed = {r.workflow_id: r for r in registry.all()}
    assert all(listed[i].builtin for i in ids)
    assert registry.get("txt2img.tiny-sd").workflow_id == ids[[w.name for w in made]
                                                               .index("txt2img.tiny-sd")]


def test_builder_json_and_yaml_are_one_workflow(registry: WorkflowRegistry,
                                                tmp_path: Path) -> None:
    wf = controlled()
    built = registry.register(wf.spec()).workflow_id
    (tmp_path / "wf.json").write_text(wf.to_json())
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(yaml.safe_load(wf.to_json())))
    assert registry.register(dfleet.load_spec(tmp_path / "wf.json")).workflow_id == built
    assert registry.register(dfleet.load_spec(tmp_path / "wf.yaml")).workflow_id == built
    assert '"operator": "denoise"' in wf.to_json()        # short names in files
    other = controlled(name="another-name")
    assert registry.register(other.spec()).workflow_id != built


def _node(spec: workflow_pb2.WorkflowSpec, node_id: str) -> workflow_pb2.WorkflowNode:
    return next(n for n in spec.nodes if n.id == node_id)


def _link(node: str, output: str) -> workflow_pb2.WorkflowBinding:
    return workflow_pb2.WorkflowBinding(node=workflow_pb2.NodeOutputRef(node=node,
                                                                        output=output))


def _cycle(spec: workflow_pb2.WorkflowSpec) -> None:
    _node(spec, "noise").operator = workflow_pb2.OPERATOR_VAE_ENCODE
    _node(spec, "noise").model = "tiny-sd"
    del _node(spec, "noise").inputs["width"]
    del _node(spec, "noise").inputs["height"]
    _node(spec, "noise").inputs["image"].CopyFrom(_link("decode", "image"))
    spec.inputs.extend([])


def _second_denoise(spec: workflow_pb2.WorkflowSpec) -> None:
    extra = spec.nodes.add()
    extra.CopyFrom(_node(spec, "denoise"))
    extra.id = "denoise2"


def _read_twice(spec: workflow_pb2.WorkflowSpec) -> None:
    _node(spec, "denoise").inputs["negative"].CopyFrom(_link("positive", "conditioning"))
    spec.nodes.remove(_node(spec, "negative"))
    spec.inputs.remove(next(i for i in spec.inputs if i.name == "negative"))


def _set(node: str, **fields: object) -> Callable[[workflow_pb2.WorkflowSpec], None]:
    def change(spec: workflow_pb2.WorkflowSpec) -> None:
        for key, value in fields.items():
            setattr(_node(spec, node), key, value)
    return change


def _input(node: str, port: str, binding: workflow_pb2.WorkflowBinding
           ) -> Callable[[workflow_pb2.WorkflowSpec], None]:
    def change(spec: workflow_pb2.WorkflowSpec) -> None:
        _node(spec, node).inputs[port].CopyFrom(binding)
    return change


def _drop(node: str, port: str) -> Callable[[workflow_pb2.WorkflowSpec], None]:
    def change(spec: workflow_pb2.WorkflowSpec) -> None:
        del _node(spec, node).inputs[port]
    return change


TEXT = workflow_pb2.WorkflowBinding(literal=workflow_pb2.WorkflowValue(text="x"))

# case -> (change to the txt2img spec, the field named, words of the message)
REFUSED: dict[str, tuple[Callable[[workflow_pb2.WorkflowSpec], None], str, str]] = {
    "cycle": (_cycle, "spec.nodes[2]", "cycle"),
    "no_operator": (_set("noise", operator=0), "spec.nodes[2].operator", "operator"),
    "unknown_model": (_set("positive", model="nope"), "spec.nodes[0].model", "unknown"),
    "wrong_model_kind": (_set("positive", model="tiny-cn-a"), "spec.nodes[0].model",
                         "unknown"),
    "unknown_mode": (_set("negative", mode="shouty"), "spec.nodes[1].mode", "mode"),
    "unknown_port": (_input("positive", "colour", TEXT), "spec.nodes[0].inputs.colour",
                     "no input"),
    "type_mismatch": (_input("denoise", "latent", _link("positive", "conditioning")),
                      "spec.nodes[3].inputs.latent", "takes latent"),
    "literal_for_a_tensor": (_input("denoise", "positive", TEXT),
                             "spec.nodes[3].inputs.positive", "comes from a node"),
    "undeclared_input": (_input("positive", "text", workflow_pb2.WorkflowBinding(input="nope")),
                         "spec.nodes[0].inputs.text", "does not declare"),
    "missing_node": (_input("denoise", "positive", _link("ghost", "conditioning")),
                     "spec.nodes[3].inputs.positive", "does not exist"),
    "missing_output": (_input("denoise", "positive", _link("positive", "pooled")),
                       "spec.nodes[3].inputs.positive", "output 'pooled'"),
    "missing_required": (_drop("denoise", "latent"), "spec.nodes[3].inputs.latent", "needs"),
    "two_denoise": (_second_denoise, "spec.nodes", "exactly one denoise"),
    "no_outputs": (lambda s: s.ClearField("outputs"), "spec.outputs", "at least one output"),
    "unused_node": (lambda s: s.nodes.add().CopyFrom(workflow_pb2.WorkflowNode(
        id="spare", operator=workflow_pb2.OPERATOR_LATENT_INIT)), "spec.nodes[5]",
        "used by nothing"),
    "unused_input": (lambda s: s.inputs.add(name="spare", type=workflow_pb2.VALUE_TYPE_INT),
                     "spec.inputs[7]", "used by no node"),
    "tensor_read_twice": (_read_twice, "spec.nodes[0]", "read 2 times"),
    "other_family_text": (_set("positive", model="tiny-sdxl"), "spec.nodes[0].model",
                          "text embeddings"),
    "other_family_vae": (_set("decode", model="tiny-sdxl"), "spec.nodes[4].model", "VAE"),
    "inpainting_without_inpaint_latent": (
        lambda s: [setattr(n, "model", "tiny-sd-inpainting") for n in s.nodes if n.model],
        "spec.nodes[3].inputs.latent", "inpainting model"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_registration_refuses_naming_the_field(registry: WorkflowRegistry, case: str) -> None:
    change, field, words = REFUSED[case]
    spec = txt2img().spec()
    change(spec)
    with pytest.raises(FleetError) as caught:
        registry.register(spec)
    assert caught.value.field == field, str(caught.value)
    assert words in caught.value.message


def test_a_controlnet_of_another_family_is_refused(registry: WorkflowRegistry) -> None:
    spec = controlled(lora=False, ip_adapter=False).spec()
    for node in spec.nodes:
        if node.model:
            node.model = "tiny-sdxl"
    with pytest.raises(FleetError) as caught:
        registry.register(spec)
    assert caught.value.field == "spec.nodes[3].controlnets[0].name"
    assert "does not fit" in caught.value.message


def _ar_workflow(adapter: str, decoder: str) -> dfleet.Workflow:
    wf = dfleet.Workflow("ar-test")
    embeddings = wf.ar_embed("tiny-ar", wf.input("prompt", "text"), id="ar")
    pooled = wf.text_encode(decoder, "", id="pooled")
    conditioning = wf.embed_adapter(adapter, embeddings, pooled, id="adapt")
    latents = wf.denoise(decoder, conditioning, None, wf.latent_init(id="noise"),
                         guidance_scale=1.0, id="denoise")
    wf.output("image", wf.vae_decode(decoder, latents, id="decode"))
    return wf


def test_an_ar_workflow_registers_when_the_widths_fit(registry: WorkflowRegistry) -> None:
    assert registry.register(_ar_workflow("tiny-embed-adapter", "tiny-sd").spec()).workflow_id


@pytest.mark.parametrize("adapter, decoder, field, words", [
    ("tiny-embed-adapter-64", "tiny-sd", "spec.nodes[2].inputs.embeddings",
     "takes embeddings of width 64, but AR model 'tiny-ar' predicts width 48"),
    ("tiny-embed-adapter", "tiny-sdxl", "spec.nodes[2].model",
     "gives embeddings of width 32, but 'tiny-sdxl' takes text of width 64"),
])
def test_mismatched_embedding_widths_are_refused(registry: WorkflowRegistry, adapter: str,
                                                 decoder: str, field: str, words: str) -> None:
    with pytest.raises(FleetError) as caught:
        registry.register(_ar_workflow(adapter, decoder).spec())
    assert caught.value.field == field
    assert words in caught.value.message


def test_the_examples_of_the_docs_register(registry: WorkflowRegistry,
                                          tmp_path: Path) -> None:
    """docs/workflows.md's builder example (up to its client calls) and its spec file are
    valid workflows here."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "workflows.md").read_text()
    start = docs.index("```yaml\n") + len("```yaml\n")
    (tmp_path / "spec.yaml").write_text(docs[start:docs.index("```", start)])
    assert registry.register(dfleet.load_spec(tmp_path / "spec.yaml")).workflow_id
    start = docs.index('    wf = dfleet.Workflow("two-windows")')
    example = textwrap.dedent(docs[start:docs.index("    with dfleet.Client", start)])
    scope: dict[str, object] = {"dfleet": dfleet}
    exec(compile(example, "docs/workflows.md", "exec"), scope)   # the project's own docs
    wf = scope["wf"]
    assert isinstance(wf, dfleet.Workflow)
    assert registry.register(wf.spec()).workflow_id.startswith("wf-")


@pytest.fixture(scope="module")
def workflows(registry: WorkflowRegistry) -> Workflows:
    return Workflows(registry, registry.store, GatewaySettings(),
                     AttachmentKinds([LoraKind(), ControlNetKind(), IpAdapterKind()]))


def _literal(node: str, port: str, value: workflow_pb2.WorkflowValue
             ) -> Callable[[workflow_pb2.WorkflowSpec], None]:
    def change(spec: workflow_pb2.WorkflowSpec) -> None:
        target = next(n for n in spec.nodes if n.id == node)
        bound = target.inputs[port]
        if bound.WhichOneof("source") == "input":
            spec.inputs.remove(next(i for i in spec.inputs if i.name == bound.input))
        bound.literal.CopyFrom(value)
    return change


def _no_negative(spec: workflow_pb2.WorkflowSpec) -> None:
    del next(n for n in spec.nodes if n.id == "denoise").inputs["negative"]
    spec.nodes.remove(next(n for n in spec.nodes if n.id == "negative"))
    spec.inputs.remove(next(i for i in spec.inputs if i.name == "negative"))


V = workflow_pb2.WorkflowValue
# case -> (change to txt2img(), the field named, words of the message)
FIXED_VALUES: dict[str, tuple[Callable[[workflow_pb2.WorkflowSpec], None], str, str]] = {
    "steps": (_literal("denoise", "steps", V(integer=-5)), "spec.nodes[3].inputs.steps",
              "outside 1.."),
    "width": (_literal("noise", "width", V(integer=60)), "spec.nodes[2].inputs.width",
              "not a positive multiple of 8"),
    "scheduler": (_literal("denoise", "scheduler", V(text="bogus")),
                  "spec.nodes[3].inputs.scheduler", "bogus"),
    "num_images": (_literal("denoise", "num_images", V(integer=9)),
                   "spec.nodes[3].inputs.num_images", "outside 1..8"),
    "guidance_without_negative": (
        lambda s: (_no_negative(s), _literal("denoise", "guidance_scale", V(number=7.5))(s)),
        "spec.nodes[2].inputs.guidance_scale", "needs a negative prompt"),
    "text_default": (lambda s: s.inputs[1].default_value.CopyFrom(V(text="x" * 100_000)),
                     "spec.inputs[1].default_value", "characters"),
    "image_default": (lambda s: s.inputs[1].default_value.CopyFrom(V(image=b"not an image")),
                      "spec.inputs[1].default_value", "image"),
}


@pytest.mark.parametrize("case", sorted(FIXED_VALUES))
def test_values_a_spec_fixes_are_checked_as_a_run_would(workflows: Workflows,
                                                        case: str) -> None:
    change, field, words = FIXED_VALUES[case]
    spec = (controlled if case == "image_default" else txt2img)(f"fixed-{case}").spec()
    change(spec)
    with pytest.raises(FleetError) as caught:
        workflows.register(spec)
    assert caught.value.field == field, caught.value
    assert words in caught.value.message


def test_values_left_to_the_run_are_not_judged_at_registration(workflows: Workflows) -> None:
    """A default a run may override (guidance 7.5 with no negative prompt: a run may ask for
    1.0) and inputs without defaults (the control images) register."""
    spec = txt2img("defaults-left").spec()
    _no_negative(spec)
    assert workflows.register(spec).workflow_id
    assert workflows.register(controlled("stand-ins").spec()).workflow_id
