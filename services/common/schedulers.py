"""The samplers a request may choose, by name, and how each is built from a model's own config.

Every choice is a diffusers scheduler class built with ``from_config`` on the scheduler config
of the model folder, plus the overrides below: the way diffusers users switch samplers
(``pipe.scheduler = Cls.from_config(pipe.scheduler.config, **overrides)``). ``default`` is the
folder's own scheduler. DPM++ SDE draws its noise from a Brownian tree; it is seeded with the
request's seed, so the same request gives the same image.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import diffusers

from services.common.errors import InvalidArgument

DEFAULT = "default"


@dataclass(frozen=True)
class SchedulerChoice:
    name: str
    class_name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    seeded_config: str = ""   # config key that takes the request's seed
    summary: str = ""


CHOICES: dict[str, SchedulerChoice] = {c.name: c for c in (
    SchedulerChoice("euler", "EulerDiscreteScheduler", summary="Euler"),
    SchedulerChoice("euler_a", "EulerAncestralDiscreteScheduler", summary="Euler ancestral"),
    SchedulerChoice("dpmpp_2m", "DPMSolverMultistepScheduler",
                    {"algorithm_type": "dpmsolver++", "solver_order": 2}, summary="DPM++ 2M"),
    SchedulerChoice("dpmpp_2m_karras", "DPMSolverMultistepScheduler",
                    {"algorithm_type": "dpmsolver++", "solver_order": 2,
                     "use_karras_sigmas": True}, summary="DPM++ 2M Karras"),
    SchedulerChoice("dpmpp_sde", "DPMSolverSDEScheduler", seeded_config="noise_sampler_seed",
                    summary="DPM++ SDE (seeded by the request)"),
    SchedulerChoice("ddim", "DDIMScheduler", summary="DDIM"),
    SchedulerChoice("unipc", "UniPCMultistepScheduler", summary="UniPC"),
    SchedulerChoice("lcm", "LCMScheduler", summary="LCM"),
    SchedulerChoice("flow_match_euler", "FlowMatchEulerDiscreteScheduler",
                    summary="flow-match Euler (flow-matching models)"),
    SchedulerChoice("flow_match_euler_karras", "FlowMatchEulerDiscreteScheduler",
                    {"use_karras_sigmas": True},
                    summary="flow-match Euler, Karras sigmas (flow-matching models)"),
)}
NAMES: tuple[str, ...] = (DEFAULT, *CHOICES)
# what models predicting noise (SD1.5, SDXL) and flow-matching models (Flux) take
FLOW_MATCHING: tuple[str, ...] = (DEFAULT, "flow_match_euler", "flow_match_euler_karras")
NOISE_PREDICTION: tuple[str, ...] = tuple(n for n in NAMES if n not in FLOW_MATCHING[1:])

_LAZY_IMPORT = threading.Lock()


def check_name(name: str, field_name: str = "scheduler") -> str:
    """``name`` (empty = default) if known; INVALID_ARGUMENT listing the valid ones if not."""
    name = name or DEFAULT
    if name not in NAMES:
        raise InvalidArgument(f"unknown scheduler {name!r}; valid: {', '.join(NAMES)}",
                              field=field_name)
    return name


def build(config: dict[str, Any], name: str = DEFAULT, seed: int = 0) -> Any:
    """A fresh scheduler (one per request) for the model whose scheduler config is ``config``."""
    name = check_name(name)
    with _LAZY_IMPORT:  # the library's lazy imports are not safe from two threads at once
        if name == DEFAULT:
            return getattr(diffusers, config["_class_name"]).from_config(config)
        choice = CHOICES[name]
        cls = getattr(diffusers, choice.class_name)
    overrides = dict(choice.overrides)
    if choice.seeded_config:
        overrides[choice.seeded_config] = seed
    return cls.from_config(config, **overrides)
