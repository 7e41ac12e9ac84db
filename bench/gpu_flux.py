"""Flux-dev-shaped workflows on one GPU: this fleet's denoiser engine against plain diffusers.

Random-weight FLUX.1-dev transformer (11.9 B parameters), a Flux ControlNet of the published
five-joint, ten-single-block shape (3.3 B) and the FLUX.1 VAE, from the configs in
``bench/model_configs`` (bf16 on a GPU); random prompt embeddings of Flux's shapes (T5
512 x 4096, CLIP pooled 768: text encoding is left out of both sides); 1024x1024, 28 steps,
distilled guidance 3.5 (no classifier-free guidance). Workflows: base, + ControlNet (its
control image VAE-encoded per request), + ControlNet + a rank-64 LoRA on the attention
projections read from its file for every request (each run names another copy).

Ours: the denoiser's engine in this process (the step loop the service runs) with the Flux
sampler and transformer forward, the ControlNet co-located on its own CUDA stream (its
residuals are read before the transformer starts: docs/families.md says why), the LoRA going
storage -> host shared memory -> device and merged in place before the first step (exact).
Diffusers: ``FluxPipeline`` / ``FluxControlNetPipeline`` on the same modules, the LoRA loaded
per request (``load_lora_weights`` + ``fuse_lora``, then ``unfuse_lora`` +
``unload_lora_weights``). End to end = (control image encoding +) denoising + VAE decode.
Median of N runs after a warm-up. Prints a table and writes JSON with the card and the date.

    python bench/gpu_workflow.py --family flux [--runs 3] [--steps 28] [--size 1024]
    python bench/gpu_workflow.py --family flux --tiny --device cpu --runs 1 --steps 2 --size 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from gpu_timing import median_of, sync, timed_pipeline_call  # this folder, on the path

from services.common.families import FAMILIES
from services.common.lora_files import ModelLayout, convert, denoiser_layers, unpack
from services.common.lora_merge import NO_PATCH, LoraPatcher
from services.common.lora_scan import module_layout, read_tensors
from services.common.model_store import ModelStore
from services.denoiser.addons.controlnet import ControlNetRequest, ControlNetSpec
from services.denoiser.addons.lora import LoraRequest, LoraSpec
from services.denoiser.engine import DenoiserEngine
from services.denoiser.flux_models import LoadedFlux
from services.denoiser.job import DenoiseJob, ErrorEvent, FinalEvent
from services.denoiser.local_controlnet import LocalControlNetLink
from services.denoiser.lora_loader import LoraDeviceCache, LoraLoader
from services.denoiser.offline import local_addons
from services.denoiser.request_state import ModelInfo
from services.lora_cache.engine import LoraCacheEngine

CONFIGS = Path(__file__).resolve().parent / "model_configs"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
GUIDANCE = 3.5
TINY_TRANSFORMER = dict(num_layers=2, num_single_layers=2, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=32,
                        pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])


def _config(name: str, tiny: bool) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((CONFIGS / name).read_text())
    config.pop("_class_name", None)
    if tiny:  # the same structure at toy widths, for a smoke run on a CPU
        if name.endswith("vae.json"):
            config.update(block_out_channels=[32] * 4, layers_per_block=1)
        else:
            config.update(TINY_TRANSFORMER)
            if "controlnet" in name:
                config.update(num_layers=1, num_single_layers=1)
    return config


def build_models(device: str, dtype: torch.dtype, tiny: bool) -> dict[str, Any]:
    from diffusers import AutoencoderKL, FluxControlNetModel, FluxTransformer2DModel

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    # built in the target dtype on the device: 11.9 B parameters in fp32 would not be small
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel.from_config(
                _config("flux1_dev_transformer.json", tiny))
            controlnet = FluxControlNetModel.from_config(_config("flux1_dev_controlnet.json",
                                                                 tiny))
            vae = AutoencoderKL.from_config(_config("flux1_dev_vae.json", tiny))
            # from_config zero-initialises the output layers: the residuals would be zeros
            for linear in (*controlnet.controlnet_blocks, *controlnet.controlnet_single_blocks,
                           controlnet.controlnet_x_embedder):
                linear.reset_parameters()
    finally:
        torch.set_default_dtype(default)
    return {"transformer": transformer.eval(), "controlnet": controlnet.eval(),
            "vae": vae.eval()}


def scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = json.loads((CONFIGS / "flux1_dev_scheduler.json").read_text())
    config.pop("_class_name")
    return FlowMatchEulerDiscreteScheduler(**config)


def write_loras(transformer: Any, folder: Path, copies: int, rank: int) -> Path:
    """One random rank-``rank`` LoRA file of the transformer, and ``copies`` names of it."""
    from diffusers import FluxPipeline

    torch.manual_seed(1)
    layers: dict[str, torch.Tensor] = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGETS):
            layers[f"{name}.lora_A.weight"] = torch.randn(rank, module.in_features) * 0.01
            layers[f"{name}.lora_B.weight"] = torch.randn(module.out_features, rank) * 0.01
    loras = folder / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    first = loras / "flux-lora-0.safetensors"
    FluxPipeline.save_lora_weights(
        loras, transformer_lora_layers={k: v.bfloat16() for k, v in layers.items()},
        weight_name=first.name, safe_serialization=True,
        transformer_lora_adapter_metadata={"r": rank, "lora_alpha": rank,
                                           "target_modules": list(LORA_TARGETS)})
    for i in range(1, copies):
        (loras / f"flux-lora-{i}.safetensors").symlink_to(first)
    return first


class Inputs:
    """The request's tensors: random Flux-shaped embeddings and a control image in [-1, 1]."""

    def __init__(self, size: int, tiny: bool) -> None:
        g = torch.Generator().manual_seed(2)
        width, pooled = (32, 32) if tiny else (4096, 768)
        self.size = size
        self.embeds = torch.randn(1, 512, width, generator=g)
        self.pooled = torch.randn(1, pooled, generator=g)
        self.cond = torch.rand(1, 3, size, size, generator=g) * 2 - 1


class Ours:
    def __init__(self, models: dict[str, Any], device: str, dtype: torch.dtype,
                 lora_store: ModelStore) -> None:
        transformer, vae = models["transformer"], models["vae"]
        sched = scheduler()
        info = ModelInfo(scheduler_config={**sched.config, "_class_name": type(sched).__name__},
                         vae_scaling_factor=vae.config.scaling_factor,
                         vae_shift_factor=vae.config.shift_factor, vae_scale_factor=8,
                         in_channels=64, latent_channels=16, device=device, dtype=dtype,
                         family=FAMILIES["flux"])
        self.loaded = LoadedFlux(transformer, info, LoraPatcher(transformer))
        self.engine = DenoiserEngine(lambda name: self.loaded)
        self.models, self.device, self.dtype = models, device, dtype
        self.lora_store = lora_store
        self.last_image = torch.zeros(())

    def request(self, x: Inputs, steps: int, controlnet: bool, lora: str | None
                ) -> dict[str, float]:
        vae = self.models["vae"]
        sync(self.device)
        start = time.perf_counter()
        addons: dict[str, Any] = {}
        if controlnet:  # what the gateway asks the VAE for
            with torch.inference_mode():
                moments = vae.encode(x.cond.to(self.device, self.dtype)).latent_dist.parameters
            addons["controlnet"] = ControlNetRequest((ControlNetSpec("cn", "", None,
                                                                     cond_moments=moments),))
        if lora:
            addons["lora"] = LoraRequest((LoraSpec(lora, 1.0, ""),))
        job = DenoiseJob(
            request_id=f"ours-{time.monotonic_ns()}", model="flux", prompt_embeds=x.embeds,
            negative_prompt_embeds=None, pooled_prompt_embeds=x.pooled, width=x.size,
            height=x.size, num_inference_steps=steps, guidance_scale=GUIDANCE, seed=0,
            addons=addons)
        loader, host, loras = None, None, None
        if lora:
            loader, host = self._lora_loader()
            loras = loader.load(list(addons["lora"].loras), job.request_id)
        links: list[LocalControlNetLink] = []

        def build(state: Any) -> list[Any]:
            if controlnet:
                links.append(LocalControlNetLink(
                    self.models["controlnet"], state.drawn["controlnet"][0],
                    state.prompt_embeds, state.added_cond, state.shared))
            return local_addons(job, state, links, loras, 0)
        self.engine.submit(job, build)
        final = _final(job)
        with torch.inference_mode():
            latents = final.latents.to(self.device, self.dtype)
            image = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor
                               ).sample
            self.last_image = (image / 2 + 0.5).clamp(0, 1)
        sync(self.device)
        end = time.perf_counter()
        for link in links:
            link.close()
        if loader is not None and host is not None:
            loader.close()
            host.close()
        return {"end_to_end_ms": (end - start) * 1e3, "step_ms": final.run_ms / final.steps}

    def _lora_loader(self) -> tuple[LoraLoader, LoraCacheEngine]:
        """A cold host tier and a cold device tier, as a replica meeting the LoRA first."""
        weights, biases = module_layout(self.models["transformer"])
        layout = ModelLayout("FluxPipeline", {"transformer": weights}, {"transformer": biases})

        def read(name: str) -> Any:
            return convert(*read_tensors(self.lora_store.lora_path(name)), layout)
        host = LoraCacheEngine(self.lora_store, budget_bytes=8 << 30, read=read)

        def fetch(spec: LoraSpec, request_id: str) -> Any:
            held = host.fetch(spec.name)
            return denoiser_layers(unpack({k: held.tensor(k) for k in held.layout},
                                          held.metadata))
        return LoraLoader(fetch, LoraDeviceCache(8 << 30), self.device), host

    def close(self) -> None:
        """Stops the engine and restores the transformer's pristine weights."""
        self.engine.stop()
        with torch.inference_mode():
            self.loaded.patcher.apply(NO_PATCH, {})


def _final(job: DenoiseJob) -> FinalEvent:
    while True:
        event = job.events.get(timeout=3600)
        if isinstance(event, FinalEvent):
            return event
        if isinstance(event, ErrorEvent):
            raise event.error


class Diffusers:
    def __init__(self, models: dict[str, Any], device: str) -> None:
        from diffusers import FluxControlNetPipeline, FluxPipeline

        parts = dict(vae=models["vae"], transformer=models["transformer"],
                     scheduler=scheduler(), text_encoder=None, text_encoder_2=None,
                     tokenizer=None, tokenizer_2=None)
        self.base = FluxPipeline(**parts)
        self.cn = FluxControlNetPipeline(controlnet=models["controlnet"], **parts)
        for pipe in (self.base, self.cn):
            pipe.set_progress_bar_config(disable=True)
        self.device = device
        self.last_image = torch.zeros(())

    def request(self, x: Inputs, steps: int, controlnet: bool,
                lora_path: Path | None) -> dict[str, float]:
        pipe = self.cn if controlnet else self.base
        dtype = pipe.transformer.dtype
        kwargs: dict[str, Any] = dict(
            prompt_embeds=x.embeds.to(self.device, dtype),
            pooled_prompt_embeds=x.pooled.to(self.device, dtype), height=x.size,
            width=x.size, num_inference_steps=steps, guidance_scale=GUIDANCE,
            generator=torch.Generator().manual_seed(0), output_type="pt")
        if controlnet:
            kwargs["control_image"] = x.cond.to(self.device, dtype)
        self.last_image, times = timed_pipeline_call(pipe, kwargs, lora_path, self.device)
        return times


def run_flux(args: argparse.Namespace) -> int:
    """The Flux rows of ``bench/gpu_workflow.py`` (its flags: runs, steps, size, rank,
    device, tiny, no_diffusers, out)."""
    device, steps = args.device, args.steps or 28
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    card = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    models = build_models(device, dtype, args.tiny)
    folder = Path(tempfile.mkdtemp(prefix="gpu-flux-"))
    per_config = args.runs + 1
    first_lora = write_loras(models["transformer"], folder, 2 * per_config, args.rank)
    store = ModelStore(folder)
    x = Inputs(args.size, args.tiny)
    names = iter(f"flux-lora-{i}" for i in range(per_config))
    plan = [("base", False, False), ("+ControlNet", True, False),
            ("+ControlNet+LoRA (K=0)", True, True)]
    rows: list[dict[str, Any]] = []
    images: dict[str, torch.Tensor] = {}
    ours = Ours(models, device, dtype, store)
    for label, cn, with_lora in plan:
        def ours_once(cn: bool = cn, with_lora: bool = with_lora) -> dict[str, float]:
            return ours.request(x, steps, cn, next(names) if with_lora else None)
        rows.append({"system": "ours", "workflow": label, **median_of(ours_once, args.runs)})
        images[f"ours {label}"] = ours.last_image.float().cpu()
    ours.close()
    if not args.no_diffusers:
        plain = Diffusers(models, device)
        files = iter(first_lora.parent / f"flux-lora-{i}.safetensors"
                     for i in range(per_config, 2 * per_config))
        for label, cn, with_lora in plan:
            def plain_once(cn: bool = cn, with_lora: bool = with_lora) -> dict[str, float]:
                return plain.request(x, steps, cn, next(files) if with_lora else None)
            rows.append({"system": "diffusers", "workflow": label.replace("(K=0)",
                                                                          "per request"),
                         **median_of(plain_once, args.runs)})
            images[f"diffusers {label}"] = plain.last_image.float().cpu()
    summary = _summary(rows, images)
    _print(rows, summary, args.size, steps, card, args.runs)
    out = Path(args.out if args.out != "bench/results/gpu_workflow.json"
               else "bench/results/gpu_flux.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(date=str(date.today()), card=card, family="flux",
                                   size=args.size, steps=steps, runs=args.runs, tiny=args.tiny,
                                   dtype=str(dtype), torch=torch.__version__, rows=rows,
                                   summary=summary), indent=1))
    print(f"wrote {out}")
    return 0


def _summary(rows: list[dict[str, Any]], images: dict[str, torch.Tensor]) -> dict[str, Any]:
    def find(system: str, workflow: str) -> float | None:
        return next((r["end_to_end_ms"] for r in rows
                     if r["system"] == system and r["workflow"].startswith(workflow)), None)
    summary: dict[str, Any] = {}
    base, full = find("ours", "base"), find("ours", "+ControlNet+LoRA")
    plain_base, plain_full = find("diffusers", "base"), find("diffusers", "+ControlNet+LoRA")
    if base and full:
        summary["ours +CN+LoRA / ours base"] = round(full / base, 3)
    if plain_full and full:
        summary["diffusers +CN+LoRA per request / ours +CN+LoRA"] = round(plain_full / full, 3)
    if plain_base and base:
        summary["diffusers base / ours base"] = round(plain_base / base, 3)
    for label in ("base", "+ControlNet"):
        a, b = images.get(f"ours {label}"), images.get(f"diffusers {label}")
        if a is not None and b is not None:
            # bf16 with random weights: equal up to the order of bf16 sums
            summary[f"max |image difference| ours vs diffusers, {label}"] = float(
                (a - b).abs().max())
    return summary


def _print(rows: list[dict[str, Any]], summary: dict[str, Any], size: int, steps: int,
           card: str, runs: int) -> None:
    print(f"\nFLUX.1-dev-shaped, random weights, {size}x{size}, {steps} steps, {card}, "
          f"median of {runs}")
    print(f"{'system':<11}{'workflow':<32}{'end to end ms':>15}{'step ms':>10}")
    for r in rows:
        print(f"{r['system']:<11}{r['workflow']:<32}{r['end_to_end_ms']:>15}{r['step_ms']:>10}")
    for key, value in summary.items():
        print(f"{key}: {value}")
