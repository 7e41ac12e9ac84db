"""The asyncio client (grpc.aio): the same calls as :class:`dfleet.Client`, as coroutines.

    async with dfleet.AsyncClient("127.0.0.1:50051") as client:
        async for event in client.stream("a cat", seed=1):
            ...
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self, Unpack

import grpc
import grpc.aio

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
from dfleet.tracing import aio_interceptors
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


class AsyncClient:
    """One grpc.aio channel to a gateway; create it inside the event loop that uses it."""

    def __init__(self, address: str, timeout: float | None = 60.0,
                 metadata: tuple[tuple[str, str], ...] = (), *, token: str | None = None,
                 tls_ca: str | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.metadata = with_token(metadata, token)
        self._channel = gateway_channel(address, tls_ca, aio=True,
                                        interceptors=aio_interceptors(address))
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)

    async def generate(self, prompt: str = "", *, timeout: float | None = None,
                       **params: Unpack[GenerateParams]) -> Result:
        async for event in self.stream(prompt, timeout=timeout, **params):
            if isinstance(event, Result):
                return event
        raise Internal(message="the stream ended without a result")

    async def stream(self, prompt: str = "", *, timeout: float | None = None,
                     **params: Unpack[GenerateParams]) -> AsyncIterator[Event]:
        """Yields Queued, Progress and finally Result; a failed request raises FleetError."""
        request = build_request(prompt, params)
        call = self._stub.Generate(request, timeout=deadline(timeout, self.timeout),
                                   metadata=self.metadata)
        request_id = request.request_id
        try:
            async for message in call:
                request_id = message.request_id or request_id
                yield event_from_proto(message)
        except grpc.RpcError as error:
            raise from_rpc_error(error, request_id) from None
        finally:
            call.cancel()

    async def cancel(self, request_id: str, timeout: float | None = None) -> bool:
        response = await self._unary(self._stub.Cancel,
                                     gateway_pb2.CancelRequest(request_id=request_id), timeout)
        return bool(response.cancelled)

    async def get(self, request_id: str, timeout: float | None = None) -> RequestStatus:
        response = await self._unary(self._stub.GetRequest,
                                     gateway_pb2.GetRequestRequest(request_id=request_id),
                                     timeout)
        return status_from_proto(response)

    async def models(self, timeout: float | None = None) -> list[ModelInfo]:
        response = await self._unary(self._stub.ListModels, gateway_pb2.ListModelsRequest(),
                                     timeout)
        return models_from_proto(response)

    async def register_template(self, model: str, image: ImageLike, prompt: str = "",
                                warm_up: bool = False, seed: int = 0, steps: int | None = None,
                                guidance_scale: float | None = None,
                                timeout: float | None = None) -> Template:
        """Registers an image for masked edits; seed, steps and guidance_scale are the recipe
        its edits use unless they name their own (None = the gateway's default)."""
        request = build_template_request(model, image, prompt, warm_up, seed, steps,
                                         guidance_scale)
        response = await self._unary(self._stub.RegisterTemplate, request, timeout)
        return Template(response.template_id, response.cache_bytes)

    async def register_workflow(self, spec: SpecLike, timeout: float | None = None) -> str:
        response = await self._unary(self._stub.RegisterWorkflow, register_request(spec),
                                     timeout)
        return str(response.workflow_id)

    async def workflows(self, timeout: float | None = None) -> list[WorkflowInfo]:
        response = await self._unary(self._stub.ListWorkflows,
                                     workflow_pb2.ListWorkflowsRequest(), timeout)
        return [info_from_summary(s) for s in response.workflows]

    async def get_workflow(self, workflow_id: str, timeout: float | None = None) -> WorkflowInfo:
        response = await self._unary(self._stub.GetWorkflow, workflow_pb2.GetWorkflowRequest(
            workflow_id=workflow_id), timeout)
        return info_from_get(response)

    async def import_workflow(self, file: str | os.PathLike[str] | None = None, *,
                              content: str = "", name: str = "", register: bool = True,
                              timeout: float | None = None) -> ImportedWorkflow:
        response = await self._unary(self._stub.ImportWorkflow,
                                     import_request(file, content, name, register), timeout)
        return imported(response)

    async def _unary(self, method, request, timeout: float | None):  # type: ignore[no-untyped-def]
        try:
            return await method(request, timeout=deadline(timeout, self.timeout),
                                metadata=self.metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error, getattr(request, "request_id", "")) from None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
