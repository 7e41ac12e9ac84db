"""A ControlNet run inside the denoiser's process: the co-located form of a ControlNet link.

Same contract as :class:`~services.denoiser.controlnet_link.ControlNetLink`
(one ``send`` answered by one ``receive``, in order), computed by a worker
thread, so the UNet's down and mid blocks overlap it just as they overlap a
remote replica. On a CUDA device the worker uses its own stream, which lets
the two models' kernels run side by side on one GPU.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import torch

from services.common.controlnet_calls import Residuals, residuals

Answer = tuple[Residuals, Any]   # the residuals, and a CUDA event or None


class LocalControlNetLink:
    def __init__(self, controlnet: Any, cond_image: torch.Tensor, prompt_embeds: torch.Tensor,
                 added_cond: dict[str, torch.Tensor] | None = None,
                 shared: dict[str, torch.Tensor] | None = None) -> None:
        self.controlnet = controlnet
        device = next(controlnet.parameters()).device
        dtype = next(controlnet.parameters()).dtype
        self.cond_image = cond_image.to(device, dtype)
        self.prompt_embeds = prompt_embeds.to(device, dtype)
        self.added_cond = added_cond
        self.shared = shared
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._answers: queue.Queue[Answer | BaseException] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="local-controlnet", daemon=True)
        self._worker.start()

    def send(self, step: int, latents: torch.Tensor, timestep: torch.Tensor,
             scale: float) -> None:
        ready = None
        if self.stream is not None:
            # the worker's stream must not read the latents before the loop's stream wrote them
            ready = torch.cuda.Event()
            ready.record()
        self._inbox.put((latents, timestep, scale, ready))

    def receive(self) -> Residuals:
        answer = self._answers.get()
        if isinstance(answer, BaseException):
            raise answer
        (first, second), done = answer
        if done is not None:
            stream = torch.cuda.current_stream()
            stream.wait_event(done)
            for tensor in (*first, *second):
                tensor.record_stream(stream)
        return first, second

    def close(self) -> None:
        self._inbox.put(None)

    def _work(self) -> None:
        with torch.inference_mode():
            while True:
                item = self._inbox.get()
                if item is None:
                    return
                try:
                    self._answers.put(self._compute(*item))
                except BaseException as exc:  # noqa: BLE001 - handed to the step loop
                    self._answers.put(exc)

    def _compute(self, latents: torch.Tensor, timestep: torch.Tensor, scale: float,
                 ready: Any) -> Answer:
        if self.stream is None:
            return self._run(latents, timestep, scale), None
        latents.record_stream(self.stream)
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            found = self._run(latents, timestep, scale)
            done = torch.cuda.Event()
            done.record(self.stream)
        return found, done

    def _run(self, latents: torch.Tensor, timestep: torch.Tensor, scale: float) -> Residuals:
        return residuals(self.controlnet, latents, timestep, self.prompt_embeds,
                         self.cond_image, scale, self.added_cond, self.shared)
