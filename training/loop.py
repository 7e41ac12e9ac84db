"""One training stage's loop: seeded batches, progress, checkpoints, resume.

A stage's state lives in ``WORK/<stage>/``: ``checkpoint.safetensors`` (the
trainable tensors, the optimizer's moments and an optional moving average of
the weights) and ``state.json`` (step, loss curve, the stage's settings).
Batch ``s`` is drawn from a generator seeded by (seed, stage, s), so a run
resumed from a checkpoint draws the batches the uninterrupted run would have.
Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LOG_EVERY = 10


@dataclass
class StageSpec:
    name: str
    steps: int
    lr: float
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)  # recorded, checked on resume
    warmup: int = 50
    checkpoint_every: int = 100
    ema_decay: float = 0.0  # 0: no moving average
    grad_clip: float = 1.0


class StageMismatch(RuntimeError):
    pass


def _lr_factor(step: int, spec: StageSpec) -> float:
    """Linear warm-up, then a cosine down to a tenth."""
    if step < spec.warmup:
        return (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Stage:
    """Trains ``params`` (named) with AdamW; ``loss_at(step)`` computes one batch's loss."""

    def __init__(self, spec: StageSpec, work: Path, params: dict[str, torch.nn.Parameter],
                 loss_at: Callable[[int], torch.Tensor], quiet: bool = False) -> None:
        self.spec = spec
        self.dir = work / spec.name
        self.params = params
        self.loss_at = loss_at
        self.quiet = quiet
        self.optimizer = torch.optim.AdamW(list(params.values()), lr=spec.lr, weight_decay=0.0)
        self.ema = ({k: p.detach().clone() for k, p in params.items()}
                    if spec.ema_decay else {})
        self.step = 0
        self.losses: list[list[float]] = []  # [step, mean loss over the last LOG_EVERY]
        self.window: list[float] = []  # losses since the last logged step

    @property
    def done(self) -> bool:
        return self.step >= self.spec.steps

    def _settings(self) -> dict[str, Any]:
        from training.shapes import fingerprint

        return {"steps": self.spec.steps, "lr": self.spec.lr, "seed": self.spec.seed,
                "warmup": self.spec.warmup, "ema_decay": self.spec.ema_decay,
                "data": fingerprint(), **self.spec.settings}

    def resume(self) -> None:
        """Loads the last checkpoint when there is one (and it is of these settings)."""
        state_file = self.dir / "state.json"
        if not state_file.exists():
            return
        state = json.loads(state_file.read_text())
        if state["settings"] != json.loads(json.dumps(self._settings())):
            raise StageMismatch(
                f"{self.dir} holds a run with other settings ({state['settings']}); "
                "remove it or choose another --work folder")
        tensors = load_file(str(self.dir / "checkpoint.safetensors"))
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(tensors[f"param.{name}"])
            for name in self.ema:
                self.ema[name].copy_(tensors[f"ema.{name}"])
        self.optimizer.load_state_dict(_optimizer_state(tensors, state["param_groups"],
                                                        len(self.params)))
        self.step = state["step"]
        self.losses = state["losses"]
        self.window = state.get("window", [])

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tensors = {f"param.{k}": p.detach().contiguous() for k, p in self.params.items()}
        tensors.update({f"ema.{k}": v.contiguous() for k, v in self.ema.items()})
        opt = self.optimizer.state_dict()
        for index, moments in opt["state"].items():
            for key, value in moments.items():
                tensors[f"opt.{index}.{key}"] = value.reshape(-1) if value.dim() == 0 else value
        tmp = self.dir / "checkpoint.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(self.dir / "checkpoint.safetensors")
        state = {"step": self.step, "losses": self.losses, "window": self.window,
                 "settings": self._settings(),
                 "param_groups": opt["param_groups"]}
        (self.dir / "state.json").write_text(json.dumps(state, indent=1))

    def run(self, stop_at: int | None = None) -> list[list[float]]:
        """Trains to the end (or to ``stop_at`` steps), checkpointing on the way."""
        self.resume()
        end = min(self.spec.steps, stop_at or self.spec.steps)
        started, first = time.monotonic(), self.step
        while self.step < end:
            for group in self.optimizer.param_groups:
                group["lr"] = self.spec.lr * _lr_factor(self.step, self.spec)
            loss = self.loss_at(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.spec.grad_clip)
            self.optimizer.step()
            self._update_ema()
            self.step += 1
            self.window.append(loss.item())
            if self.step % LOG_EVERY == 0 or self.step == self.spec.steps:
                self.losses.append([self.step, sum(self.window) / len(self.window)])
                self.window = []
                self._progress(started, first)
            if self.step % self.spec.checkpoint_every == 0 or self.step == end:
                self.save()
        if not self.quiet:
            print(file=sys.stderr)
        return self.losses

    def _update_ema(self) -> None:
        if not self.ema:
            return
        decay = min(self.spec.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for name, p in self.params.items():
                self.ema[name].lerp_(p.detach(), 1 - decay)

    def _progress(self, started: float, first: int) -> None:
        if self.quiet:
            return
        done, total = self.step, self.spec.steps
        rate = (done - first) / max(1e-9, time.monotonic() - started)
        left = (total - done) / rate if rate else float("inf")
        bar = "#" * (30 * done // total)
        print(f"\r{self.spec.name:<14} [{bar:<30}] {done}/{total} loss {self.losses[-1][1]:.4f} "
              f"{rate:.2f} steps/s, {left / 60:.1f} min left ", end="", file=sys.stderr,
              flush=True)

    def final_weights(self) -> dict[str, torch.Tensor]:
        """The moving average when kept, else the weights."""
        return self.ema or {k: p.detach() for k, p in self.params.items()}


def _optimizer_state(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]],
                     count: int) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = (value.reshape(()) if name == "step"
                                                      else value)
    return {"state": state, "param_groups": groups}


def stage_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The torch generator of one step's noise and timesteps."""
    from training.shapes import batch_rng

    return torch.Generator().manual_seed(int(batch_rng(seed, stage + "/noise", step)
                                             .integers(2**62)))
