"""python -m services.gateway"""

from __future__ import annotations

import logging
import threading

import grpc

from diffusion.v1 import gateway_pb2_grpc
from services.common.model_store import ModelStore
from services.common.server import Heartbeat, ServiceRuntime, init_process, serve
from services.common.settings import parse_settings
from services.gateway.attachments import AttachmentKinds
from services.gateway.attachments.cfg_parallel import CfgParallelKind
from services.gateway.attachments.controlnet import ControlNetKind
from services.gateway.attachments.ip_adapter import IpAdapterKind
from services.gateway.attachments.lora import LoraKind
from services.gateway.attachments.preview import PreviewKind
from services.gateway.attachments.template_edit import TemplateEditKind
from services.gateway.auth import TokenAuth, TokenFile
from services.gateway.cost_model import CostSettings
from services.gateway.edit_placement import EditCostModel, EditPlacer
from services.gateway.request_flow import RequestFlow
from services.gateway.request_log import RequestLog
from services.gateway.servicer import GatewayServicer
from services.gateway.settings import GatewaySettings
from services.gateway.template_registration import TemplateRegistrar
from services.gateway.templates import TemplateRegistry
from services.gateway.workflows.registry import WorkflowRegistry
from services.gateway.workflows.service import Workflows

ROLE = "gateway"
log = logging.getLogger("dfleet.gateway")


def _upkeep_loop(requests: RequestLog, runtime: ServiceRuntime) -> None:
    """Every heartbeat: this gateway's queue-depth counts and pending entries stay fresh
    (and come back after a Redis restart)."""
    assert runtime.fleet is not None
    while not runtime.stopping.wait(runtime.settings.heartbeat_s):
        try:
            runtime.fleet.publish_depth()
            requests.keep_alive()
        except Exception:  # noqa: BLE001 - Redis may be briefly away; next beat retries
            log.warning("request log upkeep failed", exc_info=True)


def _recover_loop(servicer: GatewayServicer, requests: RequestLog, runtime: ServiceRuntime,
                  interval_s: float) -> None:
    while not runtime.stopping.wait(interval_s):
        try:
            assert runtime.fleet is not None
            live = {r.replica_id for r in runtime.fleet.replicas(ROLE)}
            for orphan in requests.orphans(live | {runtime.settings.replica_id}):
                servicer.recover(orphan.request, orphan.stream, orphan.entry_id)
        except Exception:  # noqa: BLE001 - Redis may be briefly away; next scan retries
            log.warning("orphan scan failed", exc_info=True)


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(GatewaySettings, ROLE, argv)
    init_process(settings, ROLE)
    store = ModelStore(settings.models_dir)
    store.loras.fits()   # LoRA files are matched now: a refused one is logged at start
    holder: dict[str, GatewayServicer] = {}

    def add(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        assert runtime.fleet is not None
        runtime.fleet.count_depth_as(settings.replica_id)
        requests = RequestLog(runtime.fleet, settings.replica_id, settings.result_ttl_s,
                              settings.orphan_claim_idle_s, settings.state_ttl_s)
        registry = TemplateRegistry(runtime.fleet)
        costs = (EditCostModel.from_profile(settings.edit_cost_profile)
                 if settings.edit_cost_profile else EditCostModel())
        attachments = AttachmentKinds([
            CfgParallelKind(),
            TemplateEditKind(registry, EditPlacer(runtime.fleet, costs, settings.edit_placement),
                             settings.edit_halo),
            LoraKind(), ControlNetKind(), IpAdapterKind(), PreviewKind()])
        flow = RequestFlow(runtime.fleet, runtime.channels, runtime.exporter, runtime.importer,
                           settings.inline_max_bytes, settings.replica_wait_s,
                           CostSettings(max_pixel_steps=settings.max_pixel_steps))
        workflows = Workflows(WorkflowRegistry(runtime.fleet, store), store, settings,
                              attachments)
        workflows.register_builtins()
        servicer = GatewayServicer(settings, store, requests, flow, attachments, runtime,
                                   TemplateRegistrar(settings, store, registry, flow), workflows)
        holder["servicer"] = servicer
        gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server)
        threading.Thread(target=_upkeep_loop, daemon=True, name="upkeep",
                         args=(requests, runtime)).start()
        threading.Thread(target=_recover_loop, daemon=True, name="recover",
                         args=(servicer, requests, runtime, settings.recover_interval_s)).start()
        return ["diffusion.v1.Gateway"]

    auth = (TokenAuth(TokenFile(settings.auth_tokens_file), settings.max_inflight)
            if settings.auth_tokens_file else None)
    if auth is not None:
        auth.inflight = lambda: holder["servicer"].inflight() if holder else 0
    # A Generate stream holds a server thread for its life; admission stops at max_inflight,
    # so control calls (health, Cancel, ...) always find one of control_threads free.
    serve(ROLE, settings, add,
          Heartbeat(load=lambda: holder["servicer"].inflight() if holder else 0),
          reflection=settings.reflection,
          max_workers=settings.max_inflight + settings.control_threads,
          max_receive_bytes=settings.max_message_bytes,
          interceptors=(auth,) if auth is not None else (),
          require_client_cert=False)   # public port: clients prove themselves by token


if __name__ == "__main__":
    main()
