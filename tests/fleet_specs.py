"""A test case's spec, written as the reference pipelines take it ((name, image, scale) tuples),
as the SDK's keyword arguments."""

from __future__ import annotations

from typing import Any

import dfleet


def sdk_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(spec)
    kwargs["controlnets"] = [dfleet.ControlNet(n, image=img, scale=s)
                             for n, img, s in kwargs.pop("controlnets", [])]
    kwargs["loras"] = [dfleet.Lora(n, scale=s) for n, s in kwargs.pop("loras", [])]
    kwargs["ip_adapters"] = [dfleet.IpAdapter(n, image=img, scale=s)
                             for n, img, s in kwargs.pop("ip_adapters", [])]
    return kwargs
