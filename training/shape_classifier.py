"""A simple shape classifier, trained on the synthetic data in a few seconds.

Features of a shape's region (:func:`training.pixels.shape_region`): the region
cropped to its bounding box and resized to 12x12, plus how much of the box it
fills and the box's aspect ratio. A softmax regression on those, trained on
renders of seeded scenes of every style and size, blurred and noised so that
it sees regions as imperfect as a generated image gives.
"""

from __future__ import annotations

import functools

import numpy as np
import PIL.Image
import PIL.ImageFilter
import torch

from training import pixels, shapes

GRID = 12
TRAIN_SCENES = 1500
SEED = 7


def features(region: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(region)
    crop = region[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
    h, w = crop.shape
    small = np.asarray(PIL.Image.fromarray(crop * 255).resize((GRID, GRID), PIL.Image.BOX),
                       dtype=np.float32) / 255.0
    return np.concatenate([small.reshape(-1), [crop.mean(), h / (h + w), 1.0]]).astype(np.float32)


def _degraded(scene: shapes.Scene, rng: np.random.Generator, side: int) -> np.ndarray:
    image = shapes.render(scene, side).filter(PIL.ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, rng.uniform(0, 12),
                                                             (side, side, 3))
    return np.clip(noisy, 0, 255)


def training_set(count: int = TRAIN_SCENES, seed: int = SEED, side: int = shapes.IMAGE_SIZE
                 ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(count):
        scene = shapes.sample_scene(rng, held_out=bool(rng.random() < 0.1),
                                    style=str(rng.choice(shapes.STYLES)))
        region = pixels.shape_region(pixels.ink_mask(_degraded(scene, rng, side)))
        if region.any():
            xs.append(features(region))
            ys.append(shapes.SHAPES.index(scene.shape))
    return np.stack(xs), np.array(ys)


class ShapeClassifier:
    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight

    @classmethod
    def train(cls, count: int = TRAIN_SCENES, seed: int = SEED,
              side: int = shapes.IMAGE_SIZE) -> ShapeClassifier:
        x, y = training_set(count, seed, side)
        inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
        weight = torch.zeros(inputs.shape[1], len(shapes.SHAPES), dtype=torch.float32,
                             requires_grad=True)
        optimizer = torch.optim.LBFGS([weight], max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(inputs @ weight, targets)
            loss = loss + 1e-3 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return cls(weight.detach())

    def predict(self, region: np.ndarray) -> str | None:
        if not region.any():
            return None
        scores = torch.from_numpy(features(region)) @ self.weight
        return shapes.SHAPES[int(scores.argmax())]

    def accuracy(self, count: int = 400, seed: int = SEED + 1,
                 side: int = shapes.IMAGE_SIZE) -> float:
        x, y = training_set(count, seed, side)
        return float(((torch.from_numpy(x) @ self.weight).argmax(1).numpy() == y).mean())


@functools.lru_cache(maxsize=4)
def trained(side: int = shapes.IMAGE_SIZE) -> ShapeClassifier:
    return ShapeClassifier.train(side=side)
