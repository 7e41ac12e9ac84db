"""python -m services.denoiser"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from diffusion.v1 import denoiser_pb2_grpc
from services.common.model_store import ModelStore
from services.common.server import Heartbeat, ServiceRuntime, init_process, serve
from services.common.settings import parse_settings
from services.common.telemetry.metrics import (
    DENOISER_ACTIVE_REQUESTS,
    observed_batches,
    register_patch_switches,
)
from services.denoiser.addons import AddonRegistry
from services.denoiser.addons.cfg_partner import CfgPartnerKind
from services.denoiser.addons.controlnet import ControlNetKind
from services.denoiser.addons.ip_adapter import IpAdapterCache, IpAdapterKind
from services.denoiser.addons.lora import LoraKind
from services.denoiser.addons.preview import PreviewKind
from services.denoiser.addons.template_edit import TemplateEditKind
from services.denoiser.bal import BalProfiles
from services.denoiser.engine import DenoiserEngine
from services.denoiser.family_models import denoiser_loader
from services.denoiser.lora_loader import LoraDeviceCache, LoraLoader, service_fetch
from services.denoiser.servicer import DenoiserServicer
from services.denoiser.settings import DenoiserSettings
from services.denoiser.step_batch import LoadedModel
from services.denoiser.template_editing import TemplateEditor

ROLE = "denoiser"
log = logging.getLogger("dfleet.denoiser")


def preload_names(store: ModelStore, preload: str) -> list[str]:
    """The models named by the ``preload`` setting (NOT_FOUND for an unknown one)."""
    if preload.strip() == "all":
        return [e.name for e in store.entries() if e.kind in ("base", "inpainting")]
    names = [name.strip() for name in preload.split(",") if name.strip()]
    for name in names:
        store.pipeline(name)
    return names


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(DenoiserSettings, ROLE, argv)
    init_process(settings, ROLE)
    store = ModelStore(settings.models_dir)
    unets = denoiser_loader(store, settings.device, settings.torch_dtype, settings.cuda_graphs)

    def load(name: str) -> LoadedModel:
        store.pipeline(name)
        return unets.get(name)

    editor = TemplateEditor(settings.edit_settings())
    engine = DenoiserEngine(load, settings.max_batch_requests,
                            max_active_requests=settings.max_active_requests)
    engine.runner = observed_batches(engine.runner)
    DENOISER_ACTIVE_REQUESTS.set_function(engine.load)
    register_patch_switches(lambda: {name: unets.get(name).patcher.switches
                                     for name in unets.names()})
    for name in preload_names(store, settings.preload):
        log.info("preloading %s", name, extra={"role": ROLE})
        engine.load_unet(name)
    profiles = BalProfiles(settings.profiles_dir or Path(settings.models_dir) / "profiles")
    cache = LoraDeviceCache(settings.lora_device_budget_mb << 20)

    def add(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        loader = LoraLoader(service_fetch(runtime.channels, runtime.importer), cache,
                            settings.device, settings.lora_load_threads)
        denoiser_pb2_grpc.add_DenoiserServicer_to_server(
            DenoiserServicer(engine, runtime, addon_registry(runtime, loader)), server)
        return ["diffusion.v1.Denoiser"]

    def addon_registry(runtime: ServiceRuntime, loader: LoraLoader) -> AddonRegistry:
        """The add-on kinds in the order their hooks run: the CFG partner first (it takes
        the unconditional rows before the others see them)."""
        registry = AddonRegistry([])
        registry.kinds = [CfgPartnerKind(runtime, registry), TemplateEditKind(editor),
                          LoraKind(loader, profiles),
                          ControlNetKind(runtime, settings.parallel_controlnet),
                          IpAdapterKind(IpAdapterCache(store)), PreviewKind()]
        return registry

    def figures() -> dict[str, str]:
        found = {"step_ms": f"{engine.step_ms():.2f}",
                 "max_active_requests": str(settings.max_active_requests)}
        marginal = engine.batch_marginal()
        if marginal is not None:
            found["batch_marginal"] = f"{marginal:.3f}"
        return found

    serve(ROLE, settings, add, Heartbeat(models=unets.names, loras=cache.names, load=engine.load,
                                         extra=figures))
    engine.stop()


if __name__ == "__main__":
    main()
