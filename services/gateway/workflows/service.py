"""The gateway's workflows, for its servicer: every Generate request as a workflow run, and
registering, listing and reading workflows (no gRPC here)."""

from __future__ import annotations

import logging
import uuid

from diffusion.v1 import gateway_pb2, workflow_pb2
from services.common.errors import FleetError, InvalidArgument
from services.common.model_store import ModelStore
from services.gateway.attachments import AttachmentKinds
from services.gateway.generation import Generation
from services.gateway.settings import GatewaySettings
from services.gateway.validation import REQUEST_ID, validate
from services.gateway.workflows import builtins, comfyui
from services.gateway.workflows.binding import bind
from services.gateway.workflows.checks import check
from services.gateway.workflows.parse import parse
from services.gateway.workflows.plan import PreparedImage, builtin_plan
from services.gateway.workflows.registry import Registered, WorkflowRegistry
from services.gateway.workflows.spec import content_id, to_proto
from services.gateway.workflows.value_checks import check_values

log = logging.getLogger("dfleet.gateway")
PRIORITIES = (-10, 10)


def check_priority(value: int) -> int:
    if not PRIORITIES[0] <= value <= PRIORITIES[1]:
        raise InvalidArgument(f"{value} is outside {PRIORITIES[0]}..{PRIORITIES[1]}",
                              field="priority")
    return value


class Workflows:
    def __init__(self, registry: WorkflowRegistry, store: ModelStore, settings: GatewaySettings,
                 attachments: AttachmentKinds) -> None:
        self.registry = registry
        self.store = store
        self.settings = settings
        self.attachments = attachments

    def register_builtins(self) -> list[Registered]:
        """The request kinds of every model served (and ``ar_t2i`` where it fits), checked and
        kept like any workflow; one that does not check is logged and left out."""
        found = []
        for workflow in builtins.builtin_workflows(self.store, self.settings.default_guidance):
            try:
                found.append(self.registry.register(to_proto(workflow), builtin=True))
            except FleetError as exc:
                log.warning("built-in workflow %s left out: %s", workflow.name, exc)
        return found

    def generation(self, request: gateway_pb2.GenerateRequest) -> Generation:
        """The request checked and bound to the workflow it runs."""
        priority = check_priority(request.priority)
        if not request.workflow_id:
            if request.inputs:
                raise InvalidArgument("inputs are a workflow's: name one (workflow_id)",
                                      field="inputs")
            gen = validate(request, self.store, self.settings, self.attachments)
            gen.priority = priority
            gen.plan = builtin_plan(
                self._builtin(gen), gen.prompt, gen.negative_prompt, gen.zero_negative,
                gen.do_cfg, PreparedImage(gen.init_image, gen.masked_image, gen.mask)
                if gen.init_image is not None or gen.mask is not None else None)
            return gen
        request_id = request.request_id or uuid.uuid4().hex
        if not REQUEST_ID.fullmatch(request_id):
            raise InvalidArgument("use 1-128 characters of [A-Za-z0-9._:-]", field="request_id")
        registered = self.registry.get(request.workflow_id)
        return bind(request, registered, self.store, self.settings, self.attachments,
                    request_id)

    def _builtin(self, gen: Generation) -> Registered:
        kind = builtins.kind_of(gen.init_image is not None or gen.mask is not None,
                                gen.mask is not None)
        name = f"{kind}.{gen.model}"
        try:
            return self.registry.builtin(name)
        except KeyError:
            guidance = (self.store.family(gen.model).default_guidance
                        or self.settings.default_guidance)
            workflow = builtins.request_kind(kind, gen.model, guidance)
            return self.registry.register(to_proto(workflow), builtin=True)

    def register(self, spec: workflow_pb2.WorkflowSpec) -> Registered:
        self._check(spec)
        return self.registry.register(spec)

    def _check(self, spec: workflow_pb2.WorkflowSpec) -> None:
        """The graph (:func:`.checks.check`) and the values it fixes (:mod:`.value_checks`)."""
        workflow = parse(spec)
        check(workflow, self.store)
        check_values(Registered(content_id(spec), spec, workflow), self.store, self.settings,
                     self.attachments)

    def import_comfyui(self, content: str, name: str, register: bool
                       ) -> tuple[workflow_pb2.WorkflowSpec, str, list[str]]:
        """A ComfyUI API-format file as a spec (checked as registration checks it), its id
        when registered, and the notes on what it means here."""
        workflow, notes = comfyui.convert(content, self.store, name)
        spec = to_proto(workflow)
        if register:
            return spec, self.register(spec).workflow_id, notes
        self._check(spec)
        return spec, "", notes
