"""The Gateway's workflow calls (protos <-> :mod:`services.gateway.workflows`), mixed into its
servicer."""

from __future__ import annotations

import grpc

from diffusion.v1 import workflow_pb2
from services.common.errors import FailedPrecondition, InvalidArgument
from services.gateway.workflows.service import Workflows

MAX_IMPORT_CHARS = 4 << 20


class WorkflowRpcs:
    workflows: Workflows | None

    def _workflows(self) -> Workflows:
        if self.workflows is None:
            raise FailedPrecondition("this gateway serves no workflows", field="workflow_id")
        return self.workflows

    def RegisterWorkflow(self, request: workflow_pb2.RegisterWorkflowRequest,
                         context: grpc.ServicerContext
                         ) -> workflow_pb2.RegisterWorkflowResponse:
        if not request.HasField("spec"):
            raise InvalidArgument("a workflow spec is required", field="spec")
        registered = self._workflows().register(request.spec)
        return workflow_pb2.RegisterWorkflowResponse(workflow_id=registered.workflow_id)

    def ListWorkflows(self, request: workflow_pb2.ListWorkflowsRequest,
                      context: grpc.ServicerContext) -> workflow_pb2.ListWorkflowsResponse:
        return workflow_pb2.ListWorkflowsResponse(workflows=[
            workflow_pb2.WorkflowSummary(
                workflow_id=r.workflow_id, name=r.spec.name, description=r.spec.description,
                builtin=r.builtin, inputs=r.spec.inputs)
            for r in self._workflows().registry.all()])

    def ImportWorkflow(self, request: workflow_pb2.ImportWorkflowRequest,
                       context: grpc.ServicerContext) -> workflow_pb2.ImportWorkflowResponse:
        if request.format != workflow_pb2.WORKFLOW_FORMAT_COMFYUI_API:
            raise InvalidArgument("the fleet imports WORKFLOW_FORMAT_COMFYUI_API", field="format")
        if len(request.content) > MAX_IMPORT_CHARS:
            raise InvalidArgument(f"over {MAX_IMPORT_CHARS} characters", field="content")
        spec, workflow_id, notes = self._workflows().import_comfyui(
            request.content, request.name, request.register)
        return workflow_pb2.ImportWorkflowResponse(spec=spec, workflow_id=workflow_id,
                                                   notes=notes)

    def GetWorkflow(self, request: workflow_pb2.GetWorkflowRequest,
                    context: grpc.ServicerContext) -> workflow_pb2.GetWorkflowResponse:
        if not request.workflow_id:
            raise InvalidArgument("a workflow id is required", field="workflow_id")
        registered = self._workflows().registry.get(request.workflow_id)
        return workflow_pb2.GetWorkflowResponse(workflow_id=registered.workflow_id,
                                                spec=registered.spec, builtin=registered.builtin)
