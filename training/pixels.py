"""Reading a shapes image from its pixels: where the shape is, its colour, position, size
and drawing style.

The background of each row is the median of its two border strips (two-tone
backgrounds are split by rows, and shapes keep clear of the side borders);
*ink* is every pixel far from its row's background. A closing joins stripes
and an outline's ring, filling the holes gives the shape's region, and the
largest connected region is the shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training import shapes

INK_DISTANCE = 60.0  # RGB distance from the row's background
BORDER_PX = 2
MIN_REGION = 6  # pixels; smaller is noise
HOLLOW_FILL = 0.85  # below this share of ink in its region, a shape is drawn hollow


@dataclass
class Reading:
    region: np.ndarray  # bool [H, W]: the shape, holes filled
    ink: np.ndarray  # bool [H, W]: coloured pixels inside the region
    colour: str | None
    position: str | None
    size: str | None
    style: str | None

    @property
    def found(self) -> bool:
        return bool(self.region.any())


def _row_background(image: np.ndarray) -> np.ndarray:
    strips = np.concatenate([image[:, :BORDER_PX], image[:, -BORDER_PX:]], axis=1)
    return np.median(strips, axis=1)


def ink_mask(image: np.ndarray) -> np.ndarray:
    """``image``: uint8 or float [H, W, 3] in 0..255."""
    pixels = image.astype(np.float32)
    distance = np.linalg.norm(pixels - _row_background(pixels)[:, None, :], axis=-1)
    return distance > INK_DISTANCE


def shape_region(ink: np.ndarray) -> np.ndarray:
    closed = ndimage.binary_closing(ink, structure=np.ones((5, 5)), border_value=0)
    filled = ndimage.binary_fill_holes(closed | ink)
    labels, count = ndimage.label(filled)
    if count == 0:
        return np.zeros_like(ink)
    sizes = ndimage.sum(filled, labels, index=range(1, count + 1))
    best = int(np.argmax(sizes)) + 1
    if sizes[best - 1] < MIN_REGION:
        return np.zeros_like(ink)
    return labels == best


def nearest_colour(rgb: np.ndarray) -> str:
    names = list(shapes.COLOURS)
    palette = np.array([shapes.COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(np.linalg.norm(palette - rgb, axis=1)))]


def _position(region: np.ndarray) -> str:
    side = region.shape[0]
    ys, xs = np.nonzero(region)
    box_y, box_x = (ys.min() + ys.max()) / 2 / side, (xs.min() + xs.max()) / 2 / side
    row = int(np.argmin([abs(box_y - g) for g in shapes.GRID]))
    col = int(np.argmin([abs(box_x - g) for g in shapes.GRID]))
    return next(p for p, rc in shapes.POSITIONS.items() if rc == (row, col))


def _size(region: np.ndarray) -> str:
    """By the bounding box's larger side, against the sizes' radii (shapes' boxes are about
    two radii wide; a star's or triangle's a little more, a square's less)."""
    side = region.shape[0]
    ys, xs = np.nonzero(region)
    radius = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / 2 / side
    return min(shapes.SIZES, key=lambda s: abs(shapes.SIZES[s] - radius))


def style_of(region: np.ndarray, ink: np.ndarray) -> str:
    """Striped when rows inside the shape hold no ink (the gaps between stripes); outlined
    when ink covers too little of the shape; otherwise plain."""
    rows = np.nonzero(region.any(axis=1))[0][1:-1]
    empty_rows = sum(ink[y, region[y]].mean() < 0.15 for y in rows)
    if empty_rows >= 2:
        return "striped"
    return "outlined" if ink[region].mean() < HOLLOW_FILL else "plain"


def read(image: np.ndarray) -> Reading:
    """Reads an image (uint8 [H, W, 3], or float in [0, 1])."""
    pixels = image * 255.0 if image.dtype != np.uint8 else image.astype(np.float32)
    ink = ink_mask(pixels)
    region = shape_region(ink)
    if not region.any():
        return Reading(region, ink & region, None, None, None, None)
    inside = ink & region
    colour = nearest_colour(np.median(pixels[inside], axis=0)) if inside.any() else None
    return Reading(region, inside, colour, _position(region), _size(region),
                   style_of(region, inside))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
