"""Stage 1: the text encoder, a small CLIP text model on the byte-level tokenizer.

It learns to say what a caption names: linear heads on its pooled output
predict each attribute (colour, shape, size, position, background, style, or
"not said"). The heads are dropped afterwards; the UNet stages read the
encoder's hidden states, frozen, as SD1.5's UNet reads CLIP's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from training import architecture, shapes
from training.loop import Stage, StageSpec

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": tuple(shapes.COLOURS), "shape": shapes.SHAPES, "size": tuple(shapes.SIZES),
    "position": tuple(shapes.POSITIONS), "background": tuple(shapes.BACKGROUNDS),
    "style": shapes.STYLES[1:],
}
CAPTION_DROP = 0.4
EMPTY_CAPTION = 0.05


class AttributeHeads(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(hidden, len(values) + 1)
                                          for name, values in ATTRIBUTES.items()})

    def loss(self, pooled: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(torch.nn.functional.cross_entropy(head(pooled), targets[name])
                   for name, head in self.heads.items()) / len(self.heads)  # type: ignore[return-value]


def _targets(parts: list[dict[str, str | None]]) -> dict[str, torch.Tensor]:
    """Class 0 is "not said"."""
    return {name: torch.tensor([values.index(p[name]) + 1 if p[name] else 0 for p in parts])
            for name, values in ATTRIBUTES.items()}


def caption_batch(seed: int, stage: str, step: int, batch: int
                  ) -> tuple[list[str], list[dict[str, str | None]]]:
    rng = shapes.batch_rng(seed, stage, step)
    captions, parts = [], []
    for _ in range(batch):
        style = str(rng.choice(shapes.STYLES, p=[0.6, 0.2, 0.2]))
        described = shapes.describe(shapes.sample_scene(rng, style=style), rng, CAPTION_DROP)
        if rng.random() < EMPTY_CAPTION:
            described = {k: None for k in described}
            captions.append("")
        else:
            captions.append(shapes.caption_text(described))
        parts.append(described)
    return captions, parts


def train_text_encoder(work: Path, sizes: architecture.ModelSizes, seed: int, steps: int,
                       batch: int = 64, quiet: bool = False) -> Stage:
    torch.manual_seed(seed)
    encoder = architecture.text_encoder(sizes).train()
    heads = AttributeHeads(sizes.text_hidden)
    tok = architecture.tokenizer()
    spec = StageSpec("text_encoder", steps=steps, lr=1e-3, seed=seed,
                     settings={"batch": batch, "hidden": sizes.text_hidden,
                               "layers": sizes.text_layers}, warmup=20)

    def loss_at(step: int) -> torch.Tensor:
        captions, parts = caption_batch(seed, spec.name, step, batch)
        pooled = encoder(architecture.tokenize(tok, captions)).pooler_output
        return heads.loss(pooled, _targets(parts))

    params = {f"encoder.{k}": p for k, p in encoder.named_parameters()}
    params.update({f"heads.{k}": p for k, p in heads.named_parameters()})
    stage = Stage(spec, work, params, loss_at, quiet)
    stage.run()
    encoder.eval()
    (stage.dir / "accuracy.json").write_text(json.dumps(attribute_accuracy(encoder, heads, seed)))
    encoder.save_pretrained(stage.dir / "model", safe_serialization=True)
    # a fresh one: the one used above keeps its padding and truncation, and would save them
    # as every user's default
    architecture.tokenizer().save_pretrained(stage.dir / "tokenizer")
    return stage


def load_text_encoder(work: Path):  # type: ignore[no-untyped-def]
    from transformers import CLIPTextModel, CLIPTokenizer

    encoder = CLIPTextModel.from_pretrained(work / "text_encoder" / "model",
                                            local_files_only=True).eval()
    encoder.requires_grad_(False)
    tok = CLIPTokenizer.from_pretrained(work / "text_encoder" / "tokenizer", local_files_only=True)
    return tok, encoder


def attribute_accuracy(encoder, heads: AttributeHeads, seed: int,  # type: ignore[no-untyped-def]
                       batch: int = 512) -> dict[str, float]:
    """Share of fresh captions (another seed) whose every attribute the heads read right."""
    captions, parts = caption_batch(seed + 1, "text_check", 0, batch)
    targets = _targets(parts)
    with torch.no_grad():
        pooled = encoder(architecture.tokenize(architecture.tokenizer(), captions)).pooler_output
        return {name: float((head(pooled).argmax(-1) == targets[name]).float().mean())
                for name, head in heads.heads.items()}
