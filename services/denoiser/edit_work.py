"""Template edits in the denoiser's step loop: their works and the batch runner that serves them.

An :class:`EditWork` is a request carrying a
:class:`~services.denoiser.template_editing.TemplateEdit`: a template edit,
or a template's recording run. Edit works batch only with edit works of
the same mode: cached edits together (one masked UNet forward over all
their regions), exact edits and recording runs together (one plain UNet
forward, recorded for the recording rows). Everything else goes to the
ordinary :func:`~services.denoiser.step_batch.run_batch`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from services.denoiser.bal import LoraGate
from services.denoiser.controlnet_set import ControlNetSet
from services.denoiser.engine import DenoiserEngine
from services.denoiser.job import DenoiseJob
from services.denoiser.lora_patch import NO_PATCH
from services.denoiser.masked_unet import StepInputs
from services.denoiser.request_state import RequestState, prepare
from services.denoiser.step_batch import LoadedUnet, run_batch
from services.denoiser.template_editing import CACHED, TemplateEditor
from services.denoiser.work import RequestWork, StepWork


class EditWork(RequestWork):
    def __init__(self, state: RequestState, controls: ControlNetSet,
                 editor: TemplateEditor) -> None:
        super().__init__(state, controls, LoraGate(NO_PATCH, None, 0))
        self.editor = editor

    def group_key(self) -> tuple[Any, ...]:
        return (*super().group_key(), "edit", self.editor.group_key(self.job))

    def finish(self, error: Exception | None) -> None:
        try:
            super().finish(error)
        finally:
            self.editor.finish(self.job)


def submit_edit(engine: DenoiserEngine, editor: TemplateEditor, job: DenoiseJob,
                controls: ControlNetSet) -> None:
    """Queues a template edit, and the template's recording run when the editor asks for one."""
    model = engine.load_unet(job.model)
    extra = editor.admit(job, model.info, model.unet)
    # The recording goes first: it then ends no later than the edit, whose result reports it.
    for companion in extra:
        engine.add(EditWork(prepare(companion, model.info), ControlNetSet([], 0), editor))
    engine.add(EditWork(prepare(job, model.info), controls, editor))


class EditBatchRunner:
    """The engine's batch runner: edit batches here, every other batch to ``run_batch``."""

    def __init__(self, editor: TemplateEditor) -> None:
        self.editor = editor

    def __call__(self, model: LoadedUnet, batch: list[StepWork],
                 parallel_controlnet: bool = True) -> list[bool]:
        if not all(isinstance(work, EditWork) for work in batch):
            return run_batch(model, batch, parallel_controlnet)
        states = [work.state for work in batch]  # type: ignore[attr-defined]
        edit = states[0].job.edit
        if edit is not None and edit.mode == CACHED:
            return self._cached(model, batch, states)
        firsts = np.cumsum([0] + [s.rows for s in states[:-1]]).tolist()
        with self.editor.recording(model.unet, list(zip(states, firsts, strict=True))):
            return run_batch(model, batch, parallel_controlnet)

    def _cached(self, model: LoadedUnet, batch: list[StepWork],
                states: list[RequestState]) -> list[bool]:
        model.patcher.apply(NO_PATCH, {})
        inputs = [work.begin_step() for work in batch]
        step = StepInputs(
            torch.cat([i.sample for i in inputs]),
            torch.cat([i.timestep.to(torch.float64).reshape(1).expand(i.rows) for i in inputs]),
            torch.cat([i.embeds for i in inputs]))
        noise = self.editor.sparse_step(model.unet, states, step)
        completed, offset = [], 0
        for work, step_input in zip(batch, inputs, strict=True):
            completed.append(work.end_step(noise[offset:offset + step_input.rows]))
            offset += step_input.rows
        return completed
