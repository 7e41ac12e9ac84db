"""The synthetic shapes data set: seeded scenes, their images, captions and edge maps.

A scene is one coloured shape (circle, square, triangle, star) of a size at one
of nine positions on a plain or two-tone background, drawn plain, outlined or
striped. Captions name what the image shows, e.g. "a small red circle at the
top left on a white background"; training drops some of the words so short
prompts ("a red circle") work too.

Some (colour, shape, position) combinations never appear in training: they are
held out for the evaluator, so its captions describe scenes the model has not
seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFilter

IMAGE_SIZE = 64
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (240, 210, 40), "purple": (150, 60, 190), "cyan": (40, 200, 210),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES: dict[str, float] = {"small": 0.1, "medium": 0.15, "large": 0.2}  # radius / image side
POSITIONS: dict[str, tuple[int, int]] = {  # phrase -> (row, column) on a 3x3 grid
    "at the top left": (0, 0), "at the top": (0, 1), "at the top right": (0, 2),
    "on the left": (1, 0), "in the centre": (1, 1), "on the right": (1, 2),
    "at the bottom left": (2, 0), "at the bottom": (2, 1), "at the bottom right": (2, 2),
}
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {  # top, bottom
    "white": ((245, 245, 245), (245, 245, 245)), "black": ((20, 20, 20), (20, 20, 20)),
    "grey": ((128, 128, 128), (128, 128, 128)),
    "white and grey": ((245, 245, 245), (128, 128, 128)),
    "grey and black": ((128, 128, 128), (20, 20, 20)),
}
STYLES = ("plain", "outlined", "striped")
GRID = (0.26, 0.5, 0.74)  # centre of a grid cell, as a fraction of the side
OUTLINE_PX = 3  # at 64 px
STRIPE_PX = 4  # stripes and gaps, each this many rows at 64 px
HELD_OUT_FRACTION = 0.1
HELD_OUT_SEED = 15  # fixed: the held-out combinations do not depend on a training seed


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    size: str
    position: str
    background: str
    style: str = "plain"
    dx: float = 0.0  # jitter of the centre, fraction of the side
    dy: float = 0.0
    scale: float = 1.0  # jitter of the radius


def fingerprint() -> str:
    """A short hash of everything that defines the data set, recorded with each stage."""
    import hashlib

    spec = repr((IMAGE_SIZE, COLOURS, SHAPES, SIZES, POSITIONS, BACKGROUNDS, STYLES, GRID,
                 OUTLINE_PX, STRIPE_PX, HELD_OUT_FRACTION, HELD_OUT_SEED))
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def _all_combinations() -> list[tuple[str, str, str]]:
    return [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]


def held_out_combinations() -> frozenset[tuple[str, str, str]]:
    """(colour, shape, position) triples kept out of training."""
    combos = _all_combinations()
    count = round(len(combos) * HELD_OUT_FRACTION)
    return frozenset(random.Random(HELD_OUT_SEED).sample(combos, count))


_HELD_OUT = held_out_combinations()


def sample_scene(rng: np.random.Generator, held_out: bool = False, style: str = "plain") -> Scene:
    """A random scene; ``held_out`` picks only (and otherwise never) held-out combinations."""
    while True:
        colour = str(rng.choice(list(COLOURS)))
        shape = str(rng.choice(SHAPES))
        position = str(rng.choice(list(POSITIONS)))
        if ((colour, shape, position) in _HELD_OUT) == held_out:
            break
    return Scene(colour=colour, shape=shape, size=str(rng.choice(list(SIZES))),
                 position=position, background=str(rng.choice(list(BACKGROUNDS))), style=style,
                 dx=float(rng.uniform(-0.02, 0.02)), dy=float(rng.uniform(-0.02, 0.02)),
                 scale=float(rng.uniform(0.93, 1.07)))


def geometry(scene: Scene, side: int = IMAGE_SIZE) -> tuple[float, float, float]:
    """Centre x, centre y and radius in pixels."""
    row, col = POSITIONS[scene.position]
    return ((GRID[col] + scene.dx) * side, (GRID[row] + scene.dy) * side,
            SIZES[scene.size] * scene.scale * side)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        R = r * 1.15  # circumradius; the centroid sits a little low so the box is centred
        cy += R * 0.25
        return [(cx + R * np.sin(a), cy - R * np.cos(a)) for a in (0, 2 * np.pi / 3,
                                                                     4 * np.pi / 3)]
    if shape == "star":
        outer, inner = r * 1.15, r * 1.15 * 0.45
        return [(cx + (outer if i % 2 == 0 else inner) * np.sin(i * np.pi / 5),
                 cy - (outer if i % 2 == 0 else inner) * np.cos(i * np.pi / 5))
                for i in range(10)]
    raise ValueError(f"unknown shape {shape!r}")


def shape_mask(scene: Scene, side: int = IMAGE_SIZE) -> np.ndarray:
    """Where the shape is, as floats in [0, 1] (drawn at 4x and averaged: soft edges)."""
    big = side * 4
    cx, cy, r = geometry(scene, big)
    canvas = PIL.Image.new("L", (big, big), 0)
    draw = PIL.ImageDraw.Draw(canvas)
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(_polygon(scene.shape, cx, cy, r), fill=255)
    return np.asarray(canvas.resize((side, side), PIL.Image.BOX), dtype=np.float32) / 255.0


def _style_mask(scene: Scene, mask: np.ndarray) -> np.ndarray:
    side = mask.shape[0]
    if scene.style == "outlined":
        width = max(1, round(OUTLINE_PX * side / IMAGE_SIZE))
        inner = PIL.Image.fromarray((mask * 255).astype(np.uint8)).filter(
            PIL.ImageFilter.MinFilter(2 * width + 1))
        return np.clip(mask - np.asarray(inner, dtype=np.float32) / 255.0, 0, 1)
    if scene.style == "striped":
        period = max(2, round(2 * STRIPE_PX * side / IMAGE_SIZE))
        rows = (np.arange(side) % period) < period // 2
        return mask * rows[:, None]
    return mask


def ink_mask(scene: Scene, side: int = IMAGE_SIZE) -> np.ndarray:
    """Where the shape's colour is drawn (its style applied), floats in [0, 1]."""
    return _style_mask(scene, shape_mask(scene, side))


def background(scene: Scene, side: int = IMAGE_SIZE) -> np.ndarray:
    top, bottom = BACKGROUNDS[scene.background]
    image = np.empty((side, side, 3), dtype=np.float32)
    image[: side // 2] = top
    image[side // 2:] = bottom
    return image


def render(scene: Scene, side: int = IMAGE_SIZE) -> PIL.Image.Image:
    alpha = ink_mask(scene, side)[..., None]
    image = background(scene, side) * (1 - alpha) + np.array(COLOURS[scene.colour]) * alpha
    return PIL.Image.fromarray(np.round(image).astype(np.uint8))


def edge_map(scene: Scene, side: int = IMAGE_SIZE) -> PIL.Image.Image:
    """The ControlNet condition: the shape's outline, white on black (1 px at 64 px)."""
    mask = PIL.Image.fromarray((shape_mask(scene, side) > 0.5).astype(np.uint8) * 255)
    width = max(1, round(side / IMAGE_SIZE))
    inner = mask.filter(PIL.ImageFilter.MinFilter(2 * width + 1))
    edges = np.asarray(mask, dtype=np.int16) - np.asarray(inner, dtype=np.int16)
    return PIL.Image.fromarray(np.stack([edges.astype(np.uint8)] * 3, axis=-1))


def describe(scene: Scene, rng: np.random.Generator | None = None, drop: float = 0.0,
             keep_style: bool = True) -> dict[str, str | None]:
    """What a caption of ``scene`` says: with ``rng``, each of size, position and background
    is left out (None) with probability ``drop``, colour and shape with a third of it."""
    def kept(value: str, p: float) -> str | None:
        return value if rng is None or rng.random() >= p else None

    return {"size": kept(scene.size, drop), "colour": kept(scene.colour, drop / 3),
            "style": scene.style if keep_style and scene.style != "plain" else None,
            "shape": kept(scene.shape, drop / 3), "position": kept(scene.position, drop),
            "background": kept(scene.background, drop)}


def caption_text(parts: dict[str, str | None]) -> str:
    words = ["a"] + [parts[k] or "" for k in ("size", "colour", "style")]
    words.append(parts["shape"] or "shape")
    words.append(parts["position"] or "")
    if parts["background"]:
        words += ["on a", parts["background"], "background"]
    return " ".join(w for w in words if w)


def caption(scene: Scene, rng: np.random.Generator | None = None, drop: float = 0.0,
            keep_style: bool = True) -> str:
    """The scene's caption, e.g. "a small red circle at the top left on a white background"."""
    return caption_text(describe(scene, rng, drop, keep_style))


def batch_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    """The generator of one training step: a resumed run draws the same batches."""
    return np.random.default_rng([seed, sum(map(ord, stage)) * 7919 + len(stage), step])


def to_tensor_batch(images: list[PIL.Image.Image]):  # type: ignore[no-untyped-def]
    """Images in [-1, 1], ``[N, 3, H, W]``, as the VAE takes them."""
    import torch

    array = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
