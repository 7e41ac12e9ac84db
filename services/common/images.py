"""Decoding images as callers upload them (PNG, JPEG, ...), with limits; errors name the field."""

from __future__ import annotations

import io

import PIL.Image

from services.common.errors import InvalidArgument

MAX_DECODED_PIXELS = 4096 * 4096


def decode(data: bytes, field: str, max_bytes: int) -> PIL.Image.Image:
    if len(data) > max_bytes:
        raise InvalidArgument(f"image of {len(data)} bytes is over the limit of {max_bytes}",
                              field=field)
    try:
        image = PIL.Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_DECODED_PIXELS:
            raise InvalidArgument(f"image of {image.width}x{image.height} is too large",
                                  field=field)
        image.load()
    except InvalidArgument:
        raise
    except Exception as exc:
        raise InvalidArgument(f"not a readable image: {exc}", field=field) from exc
    return image
