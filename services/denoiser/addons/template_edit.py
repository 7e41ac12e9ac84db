"""Template edits (masked edits of a registered image), as a step-loop add-on.

The :class:`~services.denoiser.template_editing.TemplateEditor` picks each edit's mode when it
is built: *cached* (compute only the mask's region, the rest from the template's recorded
activations), *exact* (an ordinary inpainting step, with the template's recording run added
beside it when the cache asks for one) or *record* (that recording run). Edits batch only with
edits of the same mode: cached ones share one mask-aware forward, which replaces the model's;
exact ones and recording runs share one plain forward, recorded for the recording rows. An
edit with LoRAs or a CFG partner runs as an ordinary exact request: no add-on is built for it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from diffusion.v1 import denoiser_pb2
from services.common import conditioning_wire
from services.common.errors import InvalidArgument
from services.denoiser.addons import BuildContext, Export, ReadTensor
from services.denoiser.addons.base import Addon, BatchInput, Forward
from services.denoiser.masked_unet import StepInputs
from services.denoiser.request_state import RequestState, prepare
from services.denoiser.template_editing import CACHED, NAME, TemplateEdit, TemplateEditor
from services.denoiser.work import DenoiseWork


class TemplateEditAddon(Addon):
    name = NAME

    def __init__(self, editor: TemplateEditor, state: RequestState, unet: Any) -> None:
        self.editor = editor
        self.state = state
        self.unet = unet
        edit = state.job.addons.get(NAME)
        assert isinstance(edit, TemplateEdit)
        self.edit = edit

    def batch_key(self) -> Hashable | None:
        return self.editor.group_key(self.state.job)

    def wrap_forward(self, forward: Forward, works: Sequence[Any]) -> Forward:
        states = [work.sampler for work in works]
        editor, unet = self.editor, self.unet
        if self.edit.mode == CACHED:
            def sparse(batch: BatchInput) -> torch.Tensor:
                step = StepInputs(batch.sample, batch.timesteps, batch.embeds)
                return editor.sparse_step(unet, states, step)
            return sparse
        firsts = np.cumsum([0] + [s.rows_count for s in states[:-1]]).tolist()

        def recorded(batch: BatchInput) -> torch.Tensor:
            with editor.recording(unet, list(zip(states, firsts, strict=True))):
                return forward(batch)
        return recorded

    def metadata(self) -> dict[str, str]:
        return {"edit_mode": self.edit.mode, "cache_bytes": str(self.edit.cache_bytes)}

    def close(self, error: Exception | None) -> None:
        self.editor.finish(self.state.job)


class TemplateEditKind:
    name = NAME
    on_partner = False

    def __init__(self, editor: TemplateEditor | None) -> None:
        self.editor = editor

    def decode(self, spec: denoiser_pb2.TemplateEditSpec, read: ReadTensor
               ) -> TemplateEdit | None:
        if not spec.template_id:
            raise InvalidArgument("a template edit names its template",
                                  field="template_edit.template_id")
        cond = conditioning_wire.from_proto(spec.conditioning, read,
                                            "template_edit.conditioning")
        negative = conditioning_wire.from_proto(spec.negative_conditioning, read,
                                                "template_edit.negative_conditioning")
        return TemplateEdit(
            spec.template_id, activation_cache=spec.activation_cache, record=spec.record,
            prompt_embeds=cond.get("prompt_embeds"),
            negative_prompt_embeds=negative.get("prompt_embeds"),
            image_moments=read(spec.image_moments, "template_edit.image_moments"))

    def encode(self, spec: TemplateEdit, export: Export) -> denoiser_pb2.TemplateEditSpec:
        def cond(t: torch.Tensor | None) -> Any:
            return conditioning_wire.to_proto({"prompt_embeds": t}, export) if t is not None \
                else None
        return denoiser_pb2.TemplateEditSpec(
            template_id=spec.template_id, activation_cache=spec.activation_cache,
            record=spec.record, conditioning=cond(spec.prompt_embeds),
            negative_conditioning=cond(spec.negative_prompt_embeds),
            image_moments=export(spec.image_moments) if spec.image_moments is not None
            else None)

    def build(self, spec: TemplateEdit, ctx: BuildContext) -> TemplateEditAddon | None:
        editor = self.editor
        if editor is None or set(ctx.specs) & {"lora", "cfg_partner"}:
            return None   # served as an ordinary (exact) request
        state: RequestState = ctx.state
        model = ctx.engine.load_unet(ctx.model)
        # The recording run goes first: it then ends no later than the edit, which reports it.
        for companion in editor.admit(state.job, model.info, model.unet):
            recording = prepare(companion, model.info)
            ctx.engine.add(DenoiseWork(recording, [TemplateEditAddon(editor, recording,
                                                                     model.unet)]))
        return TemplateEditAddon(editor, state, model.unet)
