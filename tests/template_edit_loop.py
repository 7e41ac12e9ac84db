"""Template edits in one process: the fleet's preprocessing and step math, without services.

Prompts are encoded and images VAE-encoded as the text-encoder and VAE
services do, the mask and the masked image are prepared as the gateway
does, and the step loop is the denoiser's (``prepare`` + ``advance``), with
the :class:`~services.denoiser.template_editing.TemplateEditor` choosing
exact, recording or cached steps. Used by tests and by
``bench/masked_editing.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from services.common.model_store import ModelStore
from services.denoiser.job import DenoiseJob
from services.denoiser.masked_unet import StepInputs
from services.denoiser.request_state import ModelInfo, RequestState, prepare
from services.denoiser.template_editing import CACHED, TemplateEdit, TemplateEditor, edit_of
from services.gateway import images

# float32 whatever the folder stores (a float16 folder would otherwise run in float16)
LOAD = dict(local_files_only=True, safety_checker=None, requires_safety_checker=False,
            dtype=torch.float32)


@dataclass
class EditRun:
    pixels: np.ndarray
    latents: torch.Tensor
    mode: str
    denoise_ms: float
    total_ms: float


class EditPipeline:
    def __init__(self, models: Path, editor: TemplateEditor,
                 model: str = "tiny-sd-inpainting") -> None:
        import diffusers

        self.model = model
        self.pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
            models / model, **LOAD)
        store = ModelStore(str(models))
        self.vsf = 2 ** (len(store.vae_block_channels(model)) - 1)
        self.info = ModelInfo(scheduler_config=store.scheduler_config(model),
                              vae_scaling_factor=store.vae_scaling_factor(model),
                              vae_scale_factor=self.vsf,
                              in_channels=self.pipe.unet.config.in_channels)
        self.editor = editor

    @property
    def unet(self) -> Any:
        return self.pipe.unet

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            pos, neg = self.pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt="")
        return pos, neg

    def moments(self, image: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.pipe.vae.encode(image).latent_dist.parameters.clone()

    def template_edit(self, template_id: str, image: PIL.Image.Image, template_prompt: str,
                      cache: bool) -> TemplateEdit:
        """What the gateway attaches to every edit of a template (its recording inputs)."""
        w, h = image.size
        pos, neg = self.encode_prompt(template_prompt)
        return TemplateEdit(template_id, activation_cache=cache, prompt_embeds=pos,
                            negative_prompt_embeds=neg,
                            image_moments=self.moments(images.init_image(image, w, h, self.vsf)))

    def job(self, request_id: str, prompt: str, image: PIL.Image.Image,
            mask: PIL.Image.Image, seed: int, steps: int, guidance: float = 7.5,
            edit: TemplateEdit | None = None) -> DenoiseJob:
        w, h = image.size
        init = images.init_image(image, w, h, self.vsf)
        condition = images.mask_condition(mask, w, h, self.vsf)
        pos, neg = self.encode_prompt(prompt)
        return DenoiseJob(request_id=request_id, model=self.model, prompt_embeds=pos,
                          negative_prompt_embeds=neg, width=w, height=h,
                          num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                          strength=1.0, mask=condition,
                          masked_image_moments=self.moments(init * (condition < 0.5)),
                          addons={"template_edit": edit} if edit is not None else {})

    def denoise(self, job: DenoiseJob) -> tuple[torch.Tensor, str]:
        """Runs ``job`` (and a recording job the editor asks for, alongside) to the end."""
        companions = self.editor.admit(job, self.info, self.unet)
        states = [prepare(job, self.info)] + [prepare(c, self.info) for c in companions]
        with torch.inference_mode():
            while not states[0].done:
                self._step(states)
        for state in states:
            self.editor.finish(state.job)
        edit = edit_of(job)
        mode = edit.mode if edit is not None else "exact"
        return states[0].latents, mode

    def _step(self, states: list[RequestState]) -> None:
        inputs = [s.rows().sample for s in states]
        sample = torch.cat(inputs)
        timesteps = torch.cat([s.timesteps[s.index].to(torch.float64).reshape(1)
                               .expand(s.rows_count) for s in states])
        embeds = torch.cat([s.prompt_embeds for s in states])
        edit = edit_of(states[0].job)
        if edit is not None and edit.mode == CACHED:
            noise = self.editor.sparse_step(self.unet, states, StepInputs(sample, timesteps,
                                                                          embeds))
            self._advance(states, noise)
            return
        firsts = list(np.cumsum([0] + [s.rows_count for s in states[:-1]]))
        with self.editor.recording(self.unet, list(zip(states, firsts, strict=True))):
            noise = self.unet(sample, timesteps, encoder_hidden_states=embeds,
                              return_dict=False)[0]
            self._advance(states, noise)

    @staticmethod
    def _advance(states: list[RequestState], noise: torch.Tensor) -> None:
        offset = 0
        for state in states:
            if not state.done:
                state.advance(noise[offset:offset + state.rows_count])
            offset += state.rows_count

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        with torch.inference_mode():
            decoded = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        return images.to_pixels(decoded)

    def run(self, job_args: dict[str, Any]) -> EditRun:
        started = time.perf_counter()
        job = self.job(**job_args)
        t0 = time.perf_counter()
        latents, mode = self.denoise(job)
        denoise_ms = (time.perf_counter() - t0) * 1e3
        pixels = self.decode(latents)
        return EditRun(pixels, latents, mode, denoise_ms, (time.perf_counter() - started) * 1e3)


def box_mask(size: int, ratio: float, vsf: int = 8) -> PIL.Image.Image:
    """White (repaint) centred box covering ``ratio`` of the latent tokens, on the 8px grid."""
    tokens = size // vsf
    count = max(1, round(ratio * tokens * tokens))
    height = max(1, min(tokens, round(count ** 0.5)))
    width = max(1, min(tokens, round(count / height)))
    top, left = (tokens - height) // 2, (tokens - width) // 2
    mask = np.zeros((size, size), dtype="uint8")
    mask[top * vsf:(top + height) * vsf, left * vsf:(left + width) * vsf] = 255
    return PIL.Image.fromarray(mask)
