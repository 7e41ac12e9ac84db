"""Running requests through a denoiser engine in this process, without gRPC.

For the BAL profile command, the benchmarks and the tests: the same engine,
step loop and pipeline math as the service, fed directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future

import torch

from services.common.families import PromptInput
from services.common.lora_files import denoiser_layers
from services.common.model_store import ModelStore
from services.denoiser.addons.base import Addon, LoraLayers
from services.denoiser.addons.controlnet import ControlNetAddon, step_scales
from services.denoiser.addons.lora import LoraAddon
from services.denoiser.addons.preview import PreviewAddon
from services.denoiser.controlnet_set import ControlNetSet, StepLink
from services.denoiser.engine import DenoiserEngine
from services.denoiser.job import DenoiseJob, ErrorEvent, FinalEvent, StepEvent
from services.denoiser.request_state import RequestState

EVENT_TIMEOUT_S = 600.0


def encode_prompts(store: ModelStore, model: str, prompts: list[str]) -> list[torch.Tensor]:
    """``[1, tokens, dim]`` prompt embeddings per prompt, as the text encoder service computes
    them (the family's other conditioning: :func:`encode_conditioning`)."""
    return [c["prompt_embeds"] for c in encode_conditioning(store, model, prompts)]


def encode_conditioning(store: ModelStore, model: str, prompts: list[str]
                        ) -> list[dict[str, torch.Tensor]]:
    """Each prompt's conditioning, as the text encoder service computes it."""
    return store.family(model).encode(store.load_text_models(model),
                                      [PromptInput(p) for p in prompts])


def read_lora_layers(store: ModelStore, names: list[str]) -> LoraLayers:
    """Each LoRA's denoiser layers, converted from its file as the LoRA cache converts it."""
    return {name: denoiser_layers(store.loras.converted(name).layers) for name in names}


def ready(layers: LoraLayers) -> Future[LoraLayers]:
    future: Future[LoraLayers] = Future()
    future.set_result(layers)
    return future


def join_at(layers: LoraLayers, step: int
            ) -> tuple[Future[LoraLayers], Callable[[StepEvent], None]]:
    """A loading future that completes once ``step`` steps are done (use ``step`` as the BAL
    bound too, and the LoRAs join exactly at step ``step``); and the step callback for
    :func:`run` that completes it."""
    future: Future[LoraLayers] = Future()
    if step <= 0:
        future.set_result(layers)

    def on_step(event: StepEvent) -> None:
        if event.step >= step and not future.done():
            future.set_result(layers)
    return future, on_step


def local_addons(job: DenoiseJob, state: RequestState, links: Sequence[StepLink] = (),
                 loras: Future[LoraLayers] | None = None, bound: int = 0,
                 parallel_controlnet: bool = True) -> list[Addon]:
    """The add-ons of ``job``'s specs, with ControlNets computed by ``links`` and LoRA layers
    from ``loras`` (in-process stand-ins for the services the registry would dial)."""
    built: list[Addon] = []
    steps = len(state.timesteps)
    controlnets = job.addons.get("controlnet")
    if controlnets is not None:
        built.append(ControlNetAddon(ControlNetSet(list(links), steps, controlnets.stale),
                                     step_scales(controlnets.controlnets, steps),
                                     parallel_controlnet))
    lora = job.addons.get("lora")
    if lora is not None:
        if loras is None:
            raise ValueError("a job with LoRAs needs their loading future")
        built.append(LoraAddon(lora.patch, loras, bound))
    preview = job.addons.get("preview")
    if preview is not None:
        built.append(PreviewAddon(preview.every))
    return built


def run(engine: DenoiserEngine, job: DenoiseJob, links: Sequence[StepLink] | None = None,
        loras: Future[LoraLayers] | None = None, bound: int = 0,
        on_step: Callable[[StepEvent], None] | None = None,
        parallel_controlnet: bool = True) -> FinalEvent:
    """Submits ``job`` and waits for its end; ``on_step`` sees each step's event (with the
    latents when ``job`` asks for a preview every step)."""
    engine.submit(job, lambda state: local_addons(job, state, links or [], loras, bound,
                                                  parallel_controlnet))
    while True:
        event = job.events.get(timeout=EVENT_TIMEOUT_S)
        if isinstance(event, StepEvent) and on_step is not None:
            on_step(event)
        elif isinstance(event, FinalEvent):
            return event
        elif isinstance(event, ErrorEvent):
            raise event.error
