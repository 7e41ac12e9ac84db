"""SDXL-shaped workflows on one GPU: this fleet's denoiser engine against plain diffusers.

Random-weight SDXL UNet, ControlNet and VAE from ``bench/model_configs`` (fp16),
random prompt embeddings of SDXL's shapes (text encoding is left out of both
sides), 1024x1024, 30 steps, CFG 5. Three workflows: base, + ControlNet,
+ ControlNet + a rank-64 LoRA on the attention projections, read from its file
for every request (each run names another copy, so nothing is reused).

Ours: the denoiser's engine in this process (the step loop the service runs)
with the split UNet as CUDA graphs, the ControlNet co-located on its own CUDA
stream beside the down and mid blocks (also as a graph), the LoRA going storage
-> host shared memory -> device and merged in place, either before the first
step (K = 0, exact) or by step K (BAL). Diffusers: the SDXL (ControlNet)
pipelines on the same modules, with the LoRA loaded per request
(``load_lora_weights`` + ``fuse_lora``, then ``unfuse_lora`` +
``unload_lora_weights``). End to end = denoising + VAE decode; per step from
the step loop (ours) or step-end callbacks (diffusers). Median of N runs after
a warm-up. Prints a table and writes JSON with the card and the date.

    python bench/gpu_workflow.py [--runs 3] [--steps 30] [--size 1024] [--k 5]
    python bench/gpu_workflow.py --tiny --device cpu --runs 1 --steps 3 --size 128  # smoke run
    python bench/gpu_workflow.py --family flux ...   # FLUX.1-dev shapes: bench/gpu_flux.py

Goals (one H200): + ControlNet + LoRA within 1.25x of the base model alone (ours), and at
least 3x faster than diffusers with the LoRA loaded per request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from gpu_timing import median_of, sync, timed_pipeline_call  # noqa: E402  (this folder)

from services.common.families import FAMILIES  # noqa: E402
from services.common.lora_files import (  # noqa: E402
    ModelLayout,
    convert,
    denoiser_layers,
    unpack,
)
from services.common.lora_merge import NO_PATCH, LoraPatcher  # noqa: E402
from services.common.lora_scan import module_layout, read_tensors  # noqa: E402
from services.common.model_store import ModelStore  # noqa: E402
from services.controlnet.cuda_graph import GraphedControlNet  # noqa: E402
from services.denoiser.addons.controlnet import (  # noqa: E402
    ControlNetRequest,
    ControlNetSpec,
)
from services.denoiser.addons.lora import LoraRequest, LoraSpec  # noqa: E402
from services.denoiser.cuda_graphs import GraphedHalves  # noqa: E402
from services.denoiser.engine import DenoiserEngine  # noqa: E402
from services.denoiser.job import DenoiseJob  # noqa: E402
from services.denoiser.local_controlnet import LocalControlNetLink  # noqa: E402
from services.denoiser.lora_loader import LoraDeviceCache, LoraLoader  # noqa: E402
from services.denoiser.offline import run  # noqa: E402
from services.denoiser.request_state import ModelInfo  # noqa: E402
from services.denoiser.step_batch import Halves, LoadedUnet  # noqa: E402
from services.denoiser.unet_halves import UnetHalves  # noqa: E402
from services.lora_cache.engine import LoraCacheEngine  # noqa: E402

CONFIGS = Path(__file__).resolve().parent / "model_configs"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
GUIDANCE = 5.0


def _config(name: str, tiny: bool) -> dict[str, Any]:
    config = json.loads((CONFIGS / name).read_text())
    if name.startswith("sdxl"):
        config.pop("_class_name", None)
        if tiny:  # the same block structure at toy widths, for a smoke run on a CPU
            config.update(block_out_channels=[32, 64, 64], attention_head_dim=[2, 4, 4],
                          transformer_layers_per_block=[1, 1, 1], cross_attention_dim=64,
                          addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
                          layers_per_block=1)
            if "conditioning_embedding_out_channels" in config:
                config["conditioning_embedding_out_channels"] = [8, 16, 32, 32]
    else:
        config.pop("_class_name", None)
        config["force_upcast"] = False  # both sides decode in fp16
        if tiny:
            config.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1)
    return config


def build_models(device: str, dtype: torch.dtype, tiny: bool) -> dict[str, Any]:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(_config("sdxl_unet.json", tiny))
        controlnet = ControlNetModel.from_config(_config("sdxl_controlnet.json", tiny))
        vae = AutoencoderKL.from_config(_config("sd_vae.json", tiny))
        # from_config zero-initialises the output convolutions: the residuals would be zeros
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.reset_parameters()
    return {"unet": unet.to(dtype).eval(), "controlnet": controlnet.to(dtype).eval(),
            "vae": vae.to(dtype).eval()}


def scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", steps_offset=1,
                                  timestep_spacing="leading")


def write_loras(unet: Any, folder: Path, copies: int, rank: int) -> Path:
    """One random rank-``rank`` LoRA file, and ``copies`` names linked to it."""
    from diffusers import StableDiffusionXLPipeline

    torch.manual_seed(1)
    layers: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGETS):
            layers[f"{name}.lora_A.weight"] = torch.randn(rank, module.in_features) * 0.01
            layers[f"{name}.lora_B.weight"] = torch.randn(module.out_features, rank) * 0.01
    loras = folder / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    first = loras / "sdxl-lora-0.safetensors"
    StableDiffusionXLPipeline.save_lora_weights(
        loras, unet_lora_layers={k: v.half() for k, v in layers.items()},
        weight_name=first.name, safe_serialization=True,
        unet_lora_adapter_metadata={"r": rank, "lora_alpha": rank,
                                    "target_modules": list(LORA_TARGETS)})
    for i in range(1, copies):
        (loras / f"sdxl-lora-{i}.safetensors").symlink_to(first)
    return first


class ScaledControlNetGraph:
    """A ControlNet graph called like the model, as the co-located link calls it."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.graphed = GraphedControlNet(model)

    def parameters(self) -> Any:
        return self.model.parameters()

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, *,
                 encoder_hidden_states: torch.Tensor, controlnet_cond: torch.Tensor,
                 conditioning_scale: float, added_cond_kwargs: Any, guess_mode: bool,
                 return_dict: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        down, mid = self.graphed(sample, timestep, encoder_hidden_states, controlnet_cond,
                                 added_cond_kwargs)
        return [d * conditioning_scale for d in down], mid * conditioning_scale


class Inputs:
    """The request's tensors: random SDXL-shaped embeddings and a control image."""

    def __init__(self, size: int, tiny: bool) -> None:
        g = torch.Generator().manual_seed(2)
        width, pooled = (64, 32) if tiny else (2048, 1280)
        self.size = size
        self.embeds = torch.randn(1, 77, width, generator=g)
        self.negative = torch.randn(1, 77, width, generator=g)
        self.pooled = torch.randn(1, pooled, generator=g)
        self.negative_pooled = torch.randn(1, pooled, generator=g)
        self.time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)
        self.cond = torch.rand(1, 3, size, size, generator=g)


class Ours:
    def __init__(self, models: dict[str, Any], device: str, dtype: torch.dtype, graphs: bool,
                 lora_store: ModelStore) -> None:
        unet = models["unet"]
        sched = scheduler()
        info = ModelInfo(scheduler_config={**sched.config, "_class_name": type(sched).__name__},
                         vae_scaling_factor=models["vae"].config.scaling_factor,
                         vae_scale_factor=8, in_channels=4, device=device, dtype=dtype,
                         family=FAMILIES["sdxl"])
        halves: Halves = GraphedHalves(UnetHalves(unet)) if graphs else UnetHalves(unet)
        self.loaded = LoadedUnet(unet, info, LoraPatcher(unet), halves)
        self.engine = DenoiserEngine(lambda name: self.loaded)
        self.models, self.device, self.dtype, self.graphs = models, device, dtype, graphs
        self.last_image = torch.zeros(())
        self.lora_store = lora_store
        self.controlnet = ScaledControlNetGraph(models["controlnet"]) \
            if graphs and device.startswith("cuda") else models["controlnet"]

    def request(self, x: Inputs, steps: int, controlnet: bool, lora: str | None,
                bound: int) -> dict[str, float]:
        rows = torch.cat([x.negative, x.embeds])
        job = DenoiseJob(
            request_id=f"ours-{time.monotonic_ns()}", model="sdxl", prompt_embeds=x.embeds,
            negative_prompt_embeds=x.negative, width=x.size, height=x.size,
            num_inference_steps=steps, guidance_scale=GUIDANCE, seed=0,
            pooled_prompt_embeds=x.pooled, negative_pooled_prompt_embeds=x.negative_pooled,
            add_time_ids=x.time_ids,
            addons={**({"controlnet": ControlNetRequest((ControlNetSpec("cn", "", x.cond),))}
                       if controlnet else {}),
                    **({"lora": LoraRequest((LoraSpec(lora, 1.0, ""),))} if lora else {})})
        sync(self.device)
        start = time.perf_counter()
        links = []
        if controlnet:
            added = {"text_embeds": torch.cat([x.negative_pooled, x.pooled]).to(
                self.device, self.dtype),
                "time_ids": torch.cat([x.time_ids] * 2).to(self.device, self.dtype)}
            links.append(LocalControlNetLink(self.controlnet, torch.cat([x.cond] * 2), rows,
                                             added))
        loader = None
        loras = None
        if lora:
            unet_layers = module_layout(self.models["unet"])
            layout = ModelLayout("StableDiffusionXLPipeline", {"unet": unet_layers[0]},
                                 {"unet": unet_layers[1]}, dict(self.models["unet"].config))

            def read(name: str) -> Any:
                return convert(*read_tensors(self.lora_store.lora_path(name)), layout)
            host = LoraCacheEngine(self.lora_store, budget_bytes=8 << 30,
                                   read=read)  # cold host tier

            def fetch(spec: LoraSpec, request_id: str) -> Any:
                held = host.fetch(spec.name)
                return denoiser_layers(unpack({k: held.tensor(k) for k in held.layout},
                                              held.metadata))
            loader = LoraLoader(fetch, LoraDeviceCache(8 << 30), self.device)  # cold device
            loras = loader.load(list(job.addons["lora"].loras), job.request_id)
        final = run(self.engine, job, links, loras, bound)
        with torch.inference_mode():
            vae = self.models["vae"]
            image = vae.decode(final.latents / vae.config.scaling_factor).sample
            self.last_image = (image / 2 + 0.5).clamp(0, 1)
        sync(self.device)
        end = time.perf_counter()
        for link in links:
            link.close()
        if loader is not None:
            loader.close()
            host.close()
        return {"end_to_end_ms": (end - start) * 1e3, "step_ms": final.run_ms / final.steps,
                "lora_joined": float(final.lora_step if final.lora_step is not None else -1)}

    def close(self) -> None:
        """Stops the engine and restores the UNet's pristine weights (a LoRA stays merged
        until a request without it runs)."""
        self.engine.stop()
        with torch.inference_mode():
            self.loaded.patcher.apply(NO_PATCH, {})


class Diffusers:
    def __init__(self, models: dict[str, Any], device: str) -> None:
        from diffusers import StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline

        parts = dict(vae=models["vae"], unet=models["unet"], scheduler=scheduler(),
                     text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None)
        self.base = StableDiffusionXLPipeline(**parts)
        self.cn = StableDiffusionXLControlNetPipeline(controlnet=models["controlnet"], **parts)
        for pipe in (self.base, self.cn):
            pipe.set_progress_bar_config(disable=True)
        self.device = device
        self.last_image = torch.zeros(())

    def request(self, x: Inputs, steps: int, controlnet: bool,
                lora_path: Path | None) -> dict[str, float]:
        pipe = self.cn if controlnet else self.base
        dtype = pipe.unet.dtype
        kwargs: dict[str, Any] = dict(
            prompt_embeds=x.embeds.to(self.device, dtype),
            negative_prompt_embeds=x.negative.to(self.device, dtype),
            pooled_prompt_embeds=x.pooled.to(self.device, dtype),
            negative_pooled_prompt_embeds=x.negative_pooled.to(self.device, dtype),
            height=x.size, width=x.size, num_inference_steps=steps, guidance_scale=GUIDANCE,
            generator=torch.Generator().manual_seed(0), output_type="pt")
        if controlnet:
            kwargs["image"] = x.cond
        self.last_image, times = timed_pipeline_call(pipe, kwargs, lora_path, self.device)
        return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("sdxl", "flux"), default="sdxl",
                        help="SDXL-shaped workflows, or FLUX.1-dev-shaped ones (bench/gpu_flux.py)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per workflow")
    parser.add_argument("--steps", type=int, default=0,
                        help="denoising steps (default: 30 for SDXL, 28 for Flux)")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--k", type=int, default=5, help="BAL bound of the BAL row")
    parser.add_argument("--rank", type=int, default=64, help="rank of the LoRA")
    parser.add_argument("--device", default="cuda",
                        help="torch device (cpu for a --tiny smoke run)")
    parser.add_argument("--tiny", action="store_true", help="toy widths: a smoke run on a CPU")
    parser.add_argument("--no-diffusers", action="store_true",
                        help="leave out the plain diffusers rows")
    parser.add_argument("--out", default="bench/results/gpu_workflow.json",
                        help="JSON results file (Flux: bench/results/gpu_flux.json)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this machine has no CUDA device "
                     "(a smoke run on the CPU: --tiny --device cpu)")
    if args.family == "flux":
        from gpu_flux import run_flux  # this script's folder is on the path

        return run_flux(args)
    args.steps = args.steps or 30
    device = args.device
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    card = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    models = build_models(device, dtype, args.tiny)
    folder = Path(tempfile.mkdtemp(prefix="gpu-workflow-"))
    per_config = args.runs + 1
    first_lora = write_loras(models["unet"], folder, 3 * per_config, args.rank)
    store = ModelStore(folder)
    x = Inputs(args.size, args.tiny)
    rows: list[dict[str, Any]] = []
    names = iter(f"sdxl-lora-{i}" for i in range(3 * per_config))

    ours = Ours(models, device, dtype, graphs=device.startswith("cuda"), lora_store=store)
    plan: list[tuple[str, bool, bool, int]] = [
        ("base", False, False, 0), ("+ControlNet", True, False, 0),
        ("+ControlNet+LoRA (K=0)", True, True, 0),
        (f"+ControlNet+LoRA (BAL K={args.k})", True, True, args.k)]
    images: dict[str, torch.Tensor] = {}
    for label, cn, with_lora, k in plan:
        def ours_once(cn: bool = cn, with_lora: bool = with_lora, k: int = k
                      ) -> dict[str, float]:
            return ours.request(x, args.steps, cn, next(names) if with_lora else None, k)
        rows.append({"system": "ours", "workflow": label, **median_of(ours_once, args.runs)})
        images[f"ours {label}"] = ours.last_image.float().cpu()
    ours.close()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    if not args.no_diffusers:
        plain = Diffusers(models, device)
        lora_files = iter(first_lora.parent / f"sdxl-lora-{i}.safetensors"
                          for i in range(2 * per_config, 3 * per_config))
        for label, cn, with_lora in (("base", False, False), ("+ControlNet", True, False),
                                     ("+ControlNet+LoRA per request", True, True)):
            def plain_once(cn: bool = cn, with_lora: bool = with_lora) -> dict[str, float]:
                return plain.request(x, args.steps, cn,
                                     next(lora_files) if with_lora else None)
            rows.append({"system": "diffusers", "workflow": label,
                         **median_of(plain_once, args.runs)})
            images[f"diffusers {label}"] = plain.last_image.float().cpu()
    summary = summarize(rows)
    for ours_key, plain_key in (("ours base", "diffusers base"),
                                ("ours +ControlNet", "diffusers +ControlNet")):
        if ours_key in images and plain_key in images:
            # fp16 on a GPU with random weights may overflow; then this reads nan
            summary[f"max |image difference| {ours_key} vs {plain_key}"] = float(
                (images[ours_key] - images[plain_key]).abs().max())
    print(f"\nSDXL-shaped, random weights, {args.size}x{args.size}, {args.steps} steps, "
          f"{card}, median of {args.runs}")
    print(f"{'system':<11}{'workflow':<32}{'end to end ms':>15}{'step ms':>10}")
    for r in rows:
        print(f"{r['system']:<11}{r['workflow']:<32}{r['end_to_end_ms']:>15}{r['step_ms']:>10}")
    for key, value in summary.items():
        print(f"{key}: {value}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(date=str(date.today()), card=card, size=args.size,
                                   steps=args.steps, runs=args.runs, tiny=args.tiny,
                                   torch=torch.__version__, rows=rows, summary=summary),
                              indent=1))
    print(f"wrote {out}")
    return 0


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def find(system: str, workflow: str) -> float | None:
        return next((r["end_to_end_ms"] for r in rows
                     if r["system"] == system and r["workflow"].startswith(workflow)), None)
    base = find("ours", "base")
    full = find("ours", "+ControlNet+LoRA (K=0)")
    bal = find("ours", "+ControlNet+LoRA (BAL")
    plain_lora = find("diffusers", "+ControlNet+LoRA")
    summary: dict[str, Any] = {}
    if base and full:
        summary["ours +CN+LoRA (K=0) / ours base (goal <= 1.25)"] = round(full / base, 3)
    if base and bal:
        summary["ours +CN+LoRA (BAL) / ours base (goal <= 1.25)"] = round(bal / base, 3)
    if plain_lora and full:
        summary["diffusers +CN+LoRA / ours +CN+LoRA (K=0) (goal >= 3)"] = round(
            plain_lora / full, 3)
    plain_base = find("diffusers", "base")
    if plain_base and base:
        summary["diffusers base / ours base"] = round(plain_base / base, 3)
    return summary


if __name__ == "__main__":
    sys.exit(main())
