"""Checks every service makes on its own inputs, whoever the caller.

The gateway validates requests against its (stricter, configurable) limits; an
internal service must still refuse what it cannot or should not run when called
directly: sizes that are not positive multiples of 8, absurd step counts,
numbers that are not finite, unbounded prompts. Each refusal names the field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from services.common.errors import InvalidArgument

MAX_SIDE = 8192           # pixels: beyond any model served today
MAX_STEPS = 500          # schedulers index their 1000 training steps: stay well below
MAX_PROMPTS = 16          # per call (a batch of prompts and negative prompts)
MAX_PROMPT_CHARS = 20_000  # tokenizers truncate far below this; the rest is only cost


def check_side(value: int, field: str, max_side: int = MAX_SIDE) -> None:
    if value <= 0 or value % 8 or value > max_side:
        raise InvalidArgument(f"{value} is not a positive multiple of 8 up to {max_side}",
                              field=field)


def check_steps(value: int, field: str, max_steps: int = MAX_STEPS) -> None:
    if not 1 <= value <= max_steps:
        raise InvalidArgument(f"{value} is not in 1..{max_steps}", field=field)


def check_finite(value: float, field: str, low: float = -math.inf,
                 high: float = math.inf) -> None:
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidArgument(f"{value} is not a finite number in [{low}, {high}]", field=field)


def check_prompts(prompts: Sequence[str], field: str = "prompts",
                  max_prompts: int = MAX_PROMPTS, max_chars: int = MAX_PROMPT_CHARS) -> None:
    if len(prompts) > max_prompts:
        raise InvalidArgument(f"{len(prompts)} prompts, at most {max_prompts} per call",
                              field=field)
    for i, prompt in enumerate(prompts):
        if len(prompt) > max_chars:
            raise InvalidArgument(f"{len(prompt)} characters, at most {max_chars}",
                                  field=f"{field}[{i}]")


def check_image_shape(shape: Sequence[int], field: str, max_side: int = MAX_SIDE,
                      max_batch: int = MAX_PROMPTS) -> None:
    """A ``[B, 3, H, W]`` image tensor's declared shape, before any byte of it is read."""
    if len(shape) != 4 or shape[1] != 3 or not 1 <= shape[0] <= max_batch:
        raise InvalidArgument(f"shape {list(shape)} is not [B<={max_batch}, 3, H, W]",
                              field=field)
    check_side(shape[2], f"{field}.shape[2]", max_side)
    check_side(shape[3], f"{field}.shape[3]", max_side)


def check_latent_shape(shape: Sequence[int], field: str, max_side: int = MAX_SIDE,
                       max_batch: int = MAX_PROMPTS) -> None:
    """A ``[B, C, h, w]`` latent tensor's declared shape (h, w: an eighth of the image)."""
    if len(shape) != 4 or not 1 <= shape[0] <= max_batch or not 1 <= shape[1] <= 64:
        raise InvalidArgument(f"shape {list(shape)} is not [B<={max_batch}, C<=64, h, w]",
                              field=field)
    for axis in (2, 3):
        if not 1 <= shape[axis] <= max_side // 8:
            raise InvalidArgument(f"{shape[axis]} is not in 1..{max_side // 8}",
                                  field=f"{field}.shape[{axis}]")
