"""The blocking client of a fleet's ``Gateway`` service.

    with dfleet.Client("127.0.0.1:50051") as client:
        result = client.generate("a cat", model="tiny-sd", seed=1)
        result.image.save("cat.png")
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import TracebackType
from typing import Self, Unpack

import grpc

from dfleet.channel import deadline, gateway_channel, with_token
from dfleet.errors import Internal, from_rpc_error
from dfleet.events import (
    Event,
    ModelInfo,
    RequestStatus,
    Result,
    Template,
    event_from_proto,
    models_from_proto,
    status_from_proto,
)
from dfleet.inputs import GenerateParams, ImageLike, build_request, build_template_request
from dfleet.tracing import traced_channel
from dfleet.workflow_calls import (
    ImportedWorkflow,
    SpecLike,
    WorkflowInfo,
    import_request,
    imported,
    info_from_get,
    info_from_summary,
    register_request,
)
from diffusion.v1 import gateway_pb2, gateway_pb2_grpc, workflow_pb2


class Client:
    """One channel to a gateway; ``timeout`` (seconds, None = none) is each call's deadline.

    ``token`` is sent as ``authorization: Bearer <token>`` and ``tls_ca`` (a PEM CA file)
    turns on TLS; when not given they come from ``DFLEET_TOKEN`` and ``DFLEET_TLS_CA``.
    """

    def __init__(self, address: str, timeout: float | None = 60.0,
                 metadata: tuple[tuple[str, str], ...] = (), *, token: str | None = None,
                 tls_ca: str | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.metadata = with_token(metadata, token)
        self._channel = traced_channel(gateway_channel(address, tls_ca), address)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)

    def generate(self, prompt: str = "", *, timeout: float | None = None,
                 **params: Unpack[GenerateParams]) -> Result:
        """Runs one request to the end and returns its result."""
        for event in self.stream(prompt, timeout=timeout, **params):
            if isinstance(event, Result):
                return event
        raise Internal(message="the stream ended without a result")

    def stream(self, prompt: str = "", *, timeout: float | None = None,
               **params: Unpack[GenerateParams]) -> Iterator[Event]:
        """Yields Queued, Progress and finally Result; a failed request raises FleetError.

        Leaving the loop early cancels the RPC, which cancels the request.
        """
        request = build_request(prompt, params)
        call = self._stub.Generate(request, timeout=deadline(timeout, self.timeout),
                                   metadata=self.metadata)
        request_id = request.request_id
        try:
            for message in call:
                request_id = message.request_id or request_id
                yield event_from_proto(message)
        except grpc.RpcError as error:
            raise from_rpc_error(error, request_id) from None
        finally:
            call.cancel()

    def cancel(self, request_id: str, timeout: float | None = None) -> bool:
        """True when the request was running and is now being stopped."""
        response = self._unary(self._stub.Cancel,
                               gateway_pb2.CancelRequest(request_id=request_id), timeout)
        return bool(response.cancelled)

    def get(self, request_id: str, timeout: float | None = None) -> RequestStatus:
        response = self._unary(self._stub.GetRequest,
                               gateway_pb2.GetRequestRequest(request_id=request_id), timeout)
        return status_from_proto(response)

    def models(self, timeout: float | None = None) -> list[ModelInfo]:
        response = self._unary(self._stub.ListModels, gateway_pb2.ListModelsRequest(), timeout)
        return models_from_proto(response)

    def register_template(self, model: str, image: ImageLike, prompt: str = "",
                          warm_up: bool = False, seed: int = 0, steps: int | None = None,
                          guidance_scale: float | None = None,
                          timeout: float | None = None) -> Template:
        """Registers an image for masked edits; seed, steps and guidance_scale are the recipe
        its edits use unless they name their own (None = the gateway's default)."""
        request = build_template_request(model, image, prompt, warm_up, seed, steps,
                                         guidance_scale)
        response = self._unary(self._stub.RegisterTemplate, request, timeout)
        return Template(response.template_id, response.cache_bytes)

    def register_workflow(self, spec: SpecLike, timeout: float | None = None) -> str:
        """Registers a workflow (a :class:`dfleet.Workflow` or a spec); returns its id."""
        response = self._unary(self._stub.RegisterWorkflow, register_request(spec), timeout)
        return str(response.workflow_id)

    def workflows(self, timeout: float | None = None) -> list[WorkflowInfo]:
        response = self._unary(self._stub.ListWorkflows, workflow_pb2.ListWorkflowsRequest(),
                               timeout)
        return [info_from_summary(s) for s in response.workflows]

    def get_workflow(self, workflow_id: str, timeout: float | None = None) -> WorkflowInfo:
        response = self._unary(self._stub.GetWorkflow, workflow_pb2.GetWorkflowRequest(
            workflow_id=workflow_id), timeout)
        return info_from_get(response)

    def import_workflow(self, file: str | os.PathLike[str] | None = None, *, content: str = "",
                        name: str = "", register: bool = True,
                        timeout: float | None = None) -> ImportedWorkflow:
        """Converts a ComfyUI API-format workflow (a file, or its text) and registers it."""
        response = self._unary(self._stub.ImportWorkflow,
                               import_request(file, content, name, register), timeout)
        return imported(response)

    def _unary(self, method, request, timeout: float | None):  # type: ignore[no-untyped-def]
        try:
            return method(request, timeout=deadline(timeout, self.timeout),
                          metadata=self.metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error, getattr(request, "request_id", "")) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
