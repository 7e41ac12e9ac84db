"""Checks shared by the request's validation and its attachments' (errors name the field)."""

from __future__ import annotations

import math

from services.common.errors import InvalidArgument


def in_range(value: float, low: float, high: float, name: str) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidArgument(f"{value} is outside [{low}, {high}]", field=name)
