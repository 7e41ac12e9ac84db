"""Does the shapes model draw what it is asked? Accuracy per workflow, from the pixels.

Renders held-out captions (colour, shape and position combinations no training
batch held) through diffusers' own pipelines on a models folder, in this
process, and reads each image (:mod:`training.pixels`, the shape by
:mod:`training.shape_classifier`):

    txt2img       colour, shape, position and size against the caption
    controlnet    the caption names colour and shape only; the edge map gives where:
                  IoU of the drawn shape with the map's shape, position from the map
    lora-STYLE    the caption names no style; is the LoRA's style drawn (and how
                  often without the LoRA, the same prompts and seeds)
    inpainting    a box of another scene's image repainted to the caption's shape

The same reading of the data set's own images (``reference``) is the ceiling
the reader allows; of those images encoded and decoded by the model's VAE
(``vae-roundtrip``), the ceiling its latents allow. Prints a table, writes
JSON.

    python -m training.evaluate [--models assets/shapes-models] [--count 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import pixels, shapes
from training.export import BASE, CONTROLNET, INPAINTING, LORAS
from training.shape_classifier import trained as shape_classifier

WORKFLOWS = ("reference", "vae-roundtrip", "txt2img", "controlnet", "lora-outlined", "lora-striped",
             "inpainting")
LOAD = dict(local_files_only=True, safety_checker=None, requires_safety_checker=False,
            dtype=torch.float32)
EVAL_SEED = 2024
BATCH = 10
# The guidance the shapes model is served with (``make demo`` asks for it): at SD1.5's 7.5
# its colours come out oversaturated. The evaluator's table reports others beside it.
GUIDANCE = 3.0


@dataclass
class Case:
    scene: shapes.Scene
    prompt: str
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)


def held_out_cases(count: int, seed: int = EVAL_SEED) -> list[Case]:
    rng = np.random.default_rng(seed)
    return [Case(scene, shapes.caption(scene), seed * 1000 + i)
            for i, scene in enumerate(shapes.sample_scene(rng, held_out=True)
                                      for _ in range(count))]


def score(image: np.ndarray, scene: shapes.Scene) -> dict[str, float]:
    reading = pixels.read(image)
    shape = shape_classifier(image.shape[0]).predict(reading.region)
    truth = shapes.shape_mask(scene, image.shape[0]) > 0.5
    return {"found": float(reading.found), "colour": float(reading.colour == scene.colour),
            "shape": float(shape == scene.shape),
            "position": float(reading.position == scene.position),
            "size": float(reading.size == scene.size),
            "style": float(reading.style == scene.style),
            "iou": pixels.iou(reading.region, truth)}


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.fmean(r[key] for r in rows), 4) for key in rows[0]}


class Renderer:
    """diffusers' pipelines on one models folder, loaded once each."""

    def __init__(self, models: Path, steps: int = 20, guidance: float = GUIDANCE,
                 base: str = BASE) -> None:
        self.models = models
        self.steps = steps
        self.guidance = guidance
        self.base = base
        self._pipes: dict[str, Any] = {}

    def pipe(self, kind: str) -> Any:
        if kind not in self._pipes:
            import diffusers

            folder = self.models / self.base
            if kind == "controlnet":
                net = diffusers.ControlNetModel.from_pretrained(
                    self.models / "controlnets" / CONTROLNET, local_files_only=True,
                    dtype=torch.float32)
                pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
                    folder, controlnet=net, **LOAD)
            elif kind == "inpainting":
                pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
                    self.models / INPAINTING, **LOAD)
            else:
                pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, **LOAD)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[kind] = pipe
        return self._pipes[kind]

    def render(self, kind: str, cases: list[Case], **call: Any) -> list[np.ndarray]:
        """Float images [H, W, 3] in [0, 1], one per case, each from its own seed."""
        images = []
        for start in range(0, len(cases), BATCH):
            chunk = cases[start:start + BATCH]
            extra = {k: [c.extra[k] for c in chunk] for k in chunk[0].extra}
            with torch.no_grad():
                out = self.pipe(kind)(
                    prompt=[c.prompt for c in chunk], num_inference_steps=self.steps,
                    guidance_scale=self.guidance, output_type="np",
                    generator=[torch.Generator().manual_seed(c.seed) for c in chunk],
                    **extra, **call)
            images += list(out.images)
        return images


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _scores(images: list[np.ndarray], cases: list[Case]) -> dict[str, float]:
    return mean_scores([score(_to_uint8(im), c.scene)
                        for im, c in zip(images, cases, strict=True)])


def run_workflow(renderer: Renderer, workflow: str, cases: list[Case]) -> dict[str, Any]:
    side = shapes.IMAGE_SIZE
    if workflow == "reference":
        return mean_scores([score(np.asarray(shapes.render(c.scene, side)), c.scene)
                            for c in cases])
    if workflow == "vae-roundtrip":
        return _scores(_roundtrip(renderer, cases), cases)
    if workflow == "txt2img":
        images = renderer.render("txt2img", cases, height=side, width=side)
        return _scores(images, cases)
    if workflow == "controlnet":
        cond = [replace(c, prompt=shapes.caption_text(
            {**shapes.describe(c.scene), "position": None, "size": None}),
            extra={"image": shapes.edge_map(c.scene, side)}) for c in cases]
        images = renderer.render("controlnet", cond, height=side, width=side)
        return _scores(images, cases)
    if workflow.startswith("lora-"):
        return _lora(renderer, workflow.removeprefix("lora-"), cases)
    if workflow == "inpainting":
        return _inpainting(renderer, cases)
    raise ValueError(f"unknown workflow {workflow!r}; workflows: {', '.join(WORKFLOWS)}")


def _roundtrip(renderer: Renderer, cases: list[Case]) -> list[np.ndarray]:
    vae = renderer.pipe("txt2img").vae
    side = shapes.IMAGE_SIZE
    images = np.stack([np.asarray(shapes.render(c.scene, side)) for c in cases])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        decoded = vae.decode(vae.encode(batch).latent_dist.mean).sample
    return list(((decoded.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy())


def _lora(renderer: Renderer, style: str, cases: list[Case]) -> dict[str, Any]:
    side = shapes.IMAGE_SIZE
    styled = [replace(c, scene=replace(c.scene, style=style)) for c in cases]
    pipe = renderer.pipe("txt2img")
    without = renderer.render("txt2img", styled, height=side, width=side)
    pipe.load_lora_weights(str(renderer.models / "loras" / f"{LORAS[style]}.safetensors"),
                           adapter_name=style)
    try:
        images = renderer.render("txt2img", styled, height=side, width=side)
    finally:
        pipe.unload_lora_weights()
    result = _scores(images, styled)
    base = _scores(without, styled)
    result["style_without_lora"] = base["style"]
    return result


def _inpainting(renderer: Renderer, cases: list[Case]) -> dict[str, Any]:
    """Each case's scene is painted into a box over another scene's image (same background,
    another position); scored inside the box."""
    side = shapes.IMAGE_SIZE
    rng = np.random.default_rng(EVAL_SEED + 1)
    prepared, boxes = [], []
    for case in cases:
        others = [p for p in shapes.POSITIONS if p != case.scene.position]
        source = replace(shapes.sample_scene(rng), background=case.scene.background,
                         position=str(rng.choice(others)))
        box = _cell_box(case.scene, side)
        mask = np.zeros((side, side), dtype=np.uint8)
        mask[box] = 255
        import PIL.Image

        prepared.append(replace(case, extra={"image": shapes.render(source, side),
                                             "mask_image": PIL.Image.fromarray(mask)}))
        boxes.append(box)
    images = renderer.render("inpainting", prepared, height=side, width=side, strength=1.0)
    rows = []
    for image, case, box in zip(images, cases, boxes, strict=True):
        crop = _to_uint8(image)[box]
        reading = pixels.read(crop)
        shape = shape_classifier(side).predict(reading.region)
        rows.append({"found": float(reading.found),
                     "colour": float(reading.colour == case.scene.colour),
                     "shape": float(shape == case.scene.shape)})
    return mean_scores(rows)


def _cell_box(scene: shapes.Scene, side: int) -> tuple[slice, slice]:
    """The box the scene's shape is repainted in: its largest size's extent plus a margin."""
    cx, cy, _ = shapes.geometry(scene, side)
    half = int(side * (max(shapes.SIZES.values()) * 1.15 + 0.06))
    top, left = max(0, int(cy) - half), max(0, int(cx) - half)
    return slice(top, min(side, int(cy) + half)), slice(left, min(side, int(cx) + half))


def evaluate(models: Path, workflows: tuple[str, ...] = WORKFLOWS, count: int = 50,
             steps: int = 20, guidance: float = GUIDANCE, base: str = BASE) -> dict[str, Any]:
    renderer = Renderer(models, steps, guidance, base)
    cases = held_out_cases(count)
    results = {}
    for workflow in workflows:
        started = time.monotonic()
        results[workflow] = run_workflow(renderer, workflow, cases)
        results[workflow]["seconds"] = round(time.monotonic() - started, 1)
        print(f"{workflow}: {results[workflow]}", file=sys.stderr, flush=True)
    return {"models": str(models), "base": base, "count": count, "steps": steps,
            "guidance": guidance, "workflows": results}


def table(report: dict[str, Any]) -> str:
    keys = ("colour", "shape", "position", "size", "style", "iou", "style_without_lora")
    lines = ["| workflow | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for workflow, row in report["workflows"].items():
        cells = [f"{row[k]:.0%}" if k in row and k != "iou" else
                 (f"{row[k]:.2f}" if k in row else "-") for k in keys]
        lines.append(f"| {workflow} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = argparse.ArgumentParser(prog="python -m training.evaluate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="assets/shapes-models", help="models folder")
    parser.add_argument("--base", default=BASE, help="text-to-image pipeline folder to test")
    parser.add_argument("--workflows", default=",".join(WORKFLOWS),
                        help=f"comma-separated, of {','.join(WORKFLOWS)}")
    parser.add_argument("--count", type=int, default=50, help="held-out captions per workflow")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=GUIDANCE,
                        help="guidance scale (default: the one the shapes model is served with)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default="bench/results/shapes_eval.json", help="JSON report")
    args = parser.parse_args(argv)
    workflows = tuple(args.workflows.split(","))
    unknown = set(workflows) - set(WORKFLOWS)
    if unknown:
        parser.error(f"--workflows: unknown {sorted(unknown)}")
    torch.set_num_threads(args.threads)
    report = evaluate(Path(args.models), workflows, args.count, args.steps, args.guidance,
                      args.base)
    print(table(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
