"""Gateway settings, with the limits every request is checked against."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.input_checks import MAX_STEPS
from services.common.settings import ServiceSettings, setting
from services.gateway.auth import load_tokens


@dataclass
class GatewaySettings(ServiceSettings):
    """Gateway: validates, records and runs requests across the fleet."""

    max_side: int = setting("largest width or height accepted, pixels", default=2048)
    max_steps: int = setting("most denoising steps accepted", default=200)
    max_guidance: float = setting("largest guidance_scale accepted", default=30.0)
    max_controlnets: int = setting("most ControlNets per request", default=4)
    max_loras: int = setting("most LoRAs per request", default=4)
    max_prompt_chars: int = setting("longest prompt accepted, characters", default=4000)
    max_image_bytes: int = setting("largest encoded input image, bytes", default=32 << 20)
    max_pixel_steps: int = setting("per-request compute budget: width x height x steps x "
                                   "images above it is refused RESOURCE_EXHAUSTED; 0 = none "
                                   "(the default allows 1024x1024 at 50 steps)",
                                   default=1024 * 1024 * 50)
    max_inflight: int = setting("requests running at once before RESOURCE_EXHAUSTED",
                                default=256)
    max_message_bytes: int = setting("largest message the public port accepts, bytes (the "
                                     "ports between services keep their own, larger limit)",
                                     default=64 << 20)
    control_threads: int = setting("server threads kept for calls other than Generate "
                                   "(health, Cancel, GetRequest, ListModels): each running "
                                   "Generate stream holds one thread", default=32)
    auth_tokens_file: str = setting("YAML file of client tokens (rate and priority each; see "
                                    "docs/security.md); empty = no authentication",
                                    default="")
    max_request_s: float = setting("longest a request may run, seconds: caps the client's "
                                   "deadline and gives one to a client that set none; "
                                   "0 = no cap (no deadline from the client means none)",
                                   default=0.0)
    result_ttl_s: int = setting("seconds results (the PNGs, in Redis) stay readable by "
                                "GetRequest: Redis holds about rate x this x image size",
                                default=3600)
    state_ttl_s: int = setting("seconds a request's state (a small Redis hash) stays readable "
                               "by GetRequest after its last change", default=86400)
    replica_wait_s: float = setting("seconds a request waits for a role with no live replica "
                                    "(scale from zero) before UNAVAILABLE", default=30.0)
    progress_write_s: float = setting("seconds between writes of a running request's step to "
                                      "Redis (GetRequest); the last step is always written",
                                      default=0.5)
    recover_interval_s: float = setting("seconds between scans for orphaned requests",
                                        default=10.0)
    orphan_claim_idle_s: float = setting(
        "seconds a request of a gateway that stopped heartbeating stays untouched before a "
        "live gateway claims it (live gateways touch theirs every heartbeat_s)", default=30.0)
    default_model: str = setting("model for requests that name none; empty = the first base "
                                 "model of the models folder (of the oldest family: SD1.5, "
                                 "SDXL, Flux)", default="")
    default_steps: int = setting("steps when a request gives none", default=20)
    default_guidance: float = setting("guidance_scale when a request gives none", default=7.5)
    edit_placement: str = setting("denoiser choice for template edits: mask_aware (least "
                                  "predicted work), round_robin, least_requests",
                                  default="mask_aware")
    edit_cost_profile: str = setting("JSON of measured edit step times to fit the edit cost "
                                     "model on (bench/masked_editing.py writes one)", default="")
    edit_halo: int = setting("latent tokens the denoisers recompute around a mask (their "
                             "edit_halo), for predicting an edit's work", default=1)
    reflection: bool = setting("serve gRPC server reflection (grpcurl and other tools then "
                               "need no proto files)", default=True)

    def validate(self) -> None:
        super().validate()
        if not self.redis_url:
            raise ValueError("redis_url is required: the gateway records every request in Redis")
        if self.max_pixel_steps < 0:
            raise ValueError(f"max_pixel_steps={self.max_pixel_steps} must be >= 0 (0 = none)")
        if self.max_message_bytes < 1 << 20 or self.control_threads < 4:
            raise ValueError(f"max_message_bytes={self.max_message_bytes} must be at least "
                             f"1 MiB and control_threads={self.control_threads} at least 4")
        if self.max_side < 8 or self.max_steps < 1 or self.max_inflight < 1:
            raise ValueError(f"max_side={self.max_side}, max_steps={self.max_steps} and "
                             f"max_inflight={self.max_inflight} must be positive")
        if self.auth_tokens_file:
            load_tokens(self.auth_tokens_file)   # a broken file stops the gateway at start
        if self.orphan_claim_idle_s < 3 * self.heartbeat_s:
            raise ValueError(f"orphan_claim_idle_s={self.orphan_claim_idle_s} must be at least "
                             f"3 x heartbeat_s={self.heartbeat_s}: a live gateway touches its "
                             "requests once per heartbeat")
        if self.max_request_s < 0:
            raise ValueError(f"max_request_s={self.max_request_s} must be >= 0 (0 = no cap)")
        if self.max_steps > MAX_STEPS:
            raise ValueError(f"max_steps={self.max_steps} is over {MAX_STEPS}, the most the "
                             "denoisers run (the schedulers' 1000 training steps)")
        if not 1 <= self.default_steps <= self.max_steps:
            raise ValueError(f"default_steps={self.default_steps} must lie in "
                             f"1..max_steps={self.max_steps}")
