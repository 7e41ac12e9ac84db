"""The shapes model's training package: the data set, loss falling from scratch, resuming
from a checkpoint, the exported folder as the fleet and diffusers read it, the evaluator's
reader and the slim UNet's construction.

Toy widths (the ``quick`` recipe) and a few steps each, so the file runs in seconds of CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training import architecture, pixels, shapes
from training.loop import Stage, StageSpec
from training.recipe import QUICK, run_stages, with_steps

SIDE = architecture.QUICK.image_size


def test_scenes_are_seeded_and_held_out_combinations_never_train():
    a = [shapes.sample_scene(shapes.batch_rng(0, "unet", 5)) for _ in range(3)]
    b = [shapes.sample_scene(shapes.batch_rng(0, "unet", 5)) for _ in range(3)]
    assert a == b
    held = shapes.held_out_combinations()
    rng = np.random.default_rng(0)
    training = {(s.colour, s.shape, s.position) for s in
                (shapes.sample_scene(rng) for _ in range(2000))}
    assert training and not training & held
    assert all((s.colour, s.shape, s.position) in held
               for s in (shapes.sample_scene(rng, held_out=True) for _ in range(50)))
    scene = shapes.Scene("red", "circle", "small", "at the top left", "white")
    assert shapes.caption(scene) == "a small red circle at the top left on a white background"


def test_reader_reads_the_data_sets_own_images():
    rng = np.random.default_rng(1)
    scenes = [shapes.sample_scene(rng, style=str(rng.choice(shapes.STYLES))) for _ in range(60)]
    readings = [pixels.read(np.asarray(shapes.render(s))) for s in scenes]
    assert all(r.colour == s.colour and r.position == s.position
               for r, s in zip(readings, scenes, strict=True))
    assert np.mean([r.style == s.style for r, s in zip(readings, scenes, strict=True)]) >= 0.75


def test_shape_classifier_learns_the_shapes():
    from training.shape_classifier import ShapeClassifier

    classifier = ShapeClassifier.train(count=300)
    assert classifier.accuracy(count=120) >= 0.85


def _text_stage(work: Path, steps: int, stop_at: int | None = None) -> Stage:
    from training.text_stage import AttributeHeads, _targets, caption_batch

    torch.manual_seed(0)
    encoder = architecture.text_encoder(architecture.QUICK)
    heads = AttributeHeads(architecture.QUICK.text_hidden)
    tok = architecture.tokenizer()

    def loss_at(step: int) -> torch.Tensor:
        captions, parts = caption_batch(0, "text_encoder", step, 16)
        pooled = encoder(architecture.tokenize(tok, captions)).pooler_output
        return heads.loss(pooled, _targets(parts))

    params = {f"e.{k}": p for k, p in encoder.named_parameters()}
    params.update({f"h.{k}": p for k, p in heads.named_parameters()})
    stage = Stage(StageSpec("text_encoder", steps=steps, lr=3e-3, seed=0, warmup=2,
                            checkpoint_every=3), work, params, loss_at, quiet=True)
    stage.run(stop_at=stop_at)
    return stage


def test_text_encoder_loss_falls_from_scratch(tmp_path):
    losses = [loss for _, loss in _text_stage(tmp_path, 40).losses]
    assert losses[-1] < 0.9 * losses[0], losses


def test_a_resumed_run_repeats_the_uninterrupted_one(tmp_path):
    straight = _text_stage(tmp_path / "a", 12)
    _text_stage(tmp_path / "b", 12, stop_at=6)
    resumed = _text_stage(tmp_path / "b", 12)
    assert np.allclose(resumed.losses, straight.losses, rtol=1e-5)
    for name, p in straight.params.items():
        torch.testing.assert_close(resumed.params[name], p, rtol=1e-5, atol=1e-6)


def test_unet_loss_falls_on_a_fixed_batch(tmp_path):
    from training.diffusion_data import Frozen, noise_loss
    from training.loop import stage_generator

    torch.manual_seed(0)
    vae = architecture.vae(architecture.QUICK).eval().requires_grad_(False)
    tok = architecture.tokenizer()
    encoder = architecture.text_encoder(architecture.QUICK).eval().requires_grad_(False)
    frozen = Frozen(vae, tok, encoder, side=SIDE)
    unet = architecture.unet(architecture.QUICK)
    schedule = architecture.training_noise_schedule()
    fixed = frozen.batch(0, "check", 0, 8)

    def held_loss() -> float:
        with torch.no_grad():
            return float(noise_loss(unet, fixed, stage_generator(0, "check", 0), schedule))

    before = held_loss()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    for step in range(15):
        loss = noise_loss(unet, frozen.batch(0, "unet", step, 8), stage_generator(0, "u", step),
                          schedule)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert held_loss() < 0.8 * before


@pytest.fixture(scope="module")
def quick_tree(tmp_path_factory):
    from training.export import export_tree

    work = tmp_path_factory.mktemp("work")
    recipe = with_steps(QUICK, {stage: 2 for stage in QUICK.steps})
    curves = run_stages(recipe, work, seed=0, quiet=True)
    return export_tree(work, tmp_path_factory.mktemp("models") / "tree",
                       {"command": "test", "seed": 0, "loss_curves": curves})


def test_exported_tree_is_what_the_fleet_and_diffusers_read(quick_tree):
    import diffusers

    from services.common.lora_merge import LoraPatcher
    from services.common.model_store import ModelStore
    from services.denoiser.offline import read_lora_layers

    store = ModelStore(quick_tree)
    kinds = {e.name: e.kind for e in store.entries()}
    assert kinds == {"shapes-sd": "base", "shapes-sd-inpainting": "inpainting",
                     "shapes-edges": "controlnet", "shapes-outlined": "lora",
                     "shapes-striped": "lora"}
    unet = store.load_unet("shapes-sd")
    assert unet.dtype == torch.float32
    assert store.load_unet("shapes-sd-inpainting").config.in_channels == 9
    layers = read_lora_layers(store, ["shapes-striped"])["shapes-striped"]
    LoraPatcher(unet).check("shapes-striped", layers)
    assert any(".conv1" in name for name in layers)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        quick_tree / "shapes-sd", local_files_only=True, safety_checker=None,
        requires_safety_checker=False, dtype=torch.float32)
    pipe.load_lora_weights(str(store.lora_path("shapes-outlined")), adapter_name="o")
    image = pipe("a red circle", num_inference_steps=2, height=SIDE, width=SIDE,
                 output_type="np", generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (SIDE, SIDE, 3)
    assert (quick_tree / "recipe.json").exists()
    # the tokenizer pads and truncates only when asked, read by transformers or by the
    # tokenizers library from its tokenizer.json
    from tokenizers import Tokenizer

    ids = pipe.tokenizer("a red circle").input_ids
    assert ids == architecture.tokenizer()("a red circle").input_ids and len(ids) < 77, ids
    raw = Tokenizer.from_file(str(quick_tree / "shapes-sd" / "tokenizer" / "tokenizer.json"))
    assert raw.encode("a red circle").ids == ids


def test_slim_unet_keeps_the_full_one_at_full_width_and_narrows_consistently():
    from training.filter_pca import level_widths
    from training.slim_unet import slim_unet

    torch.manual_seed(0)
    full = architecture.unet(architecture.SHIPPED).eval()
    side = architecture.SHIPPED.latent_size
    sample = torch.randn(2, 4, side, side)
    text = torch.randn(2, 77, architecture.SHIPPED.text_hidden)
    same, _ = slim_unet(full, list(full.config.block_out_channels))
    full_widths = list(full.config.block_out_channels)
    narrow, plan = slim_unet(full, [w // 2 for w in full_widths])
    with torch.no_grad():
        expected = full(sample, 300, encoder_hidden_states=text).sample
        torch.testing.assert_close(same(sample, 300, encoder_hidden_states=text).sample,
                                   expected, rtol=0, atol=0)
        assert narrow(sample, 300, encoder_hidden_states=text).sample.shape == expected.shape
    narrow_count = sum(p.numel() for p in narrow.parameters())
    assert narrow_count < sum(p.numel() for p in full.parameters()) / 2
    middle = full_widths[1]
    assert len(plan.stream[middle]) == middle // 2
    assert len(set(plan.stream[middle].tolist())) == middle // 2
    low, _ = level_widths(full, 0.5)
    high, _ = level_widths(full, 0.95)
    assert all(a <= b and a % 8 == 0 for a, b in zip(low, high, strict=True))


def test_guided_prediction_is_the_empty_half_plus_guidance_times_the_difference():
    from training.slim import guided

    captioned, empty = torch.full((2, 4, 2, 2), 3.0), torch.full((2, 4, 2, 2), 1.0)
    together = torch.cat([captioned, empty])
    torch.testing.assert_close(guided(together, 3.0), torch.full((2, 4, 2, 2), 7.0))
    torch.testing.assert_close(guided(together, 1.0), captioned)


def test_slim_command_writes_a_tier_folder_the_fleet_and_diffusers_read(quick_tree, tmp_path):
    """`python -m training slim` on a trained tree: PCA widths, distillation with the guided
    loss, a `<model>-slim` pipeline folder whose tier.json says what it is and what was
    measured; the model store sees it as the slim tier of the full model."""
    import json
    import shutil

    from diffusers import StableDiffusionPipeline

    from services.common.model_store import ModelStore
    from services.gateway import tiers
    from training import slim

    models = tmp_path / "models"
    shutil.copytree(quick_tree, models)
    assert slim.main(["--models", str(models), "--tau", "0.8", "--steps", "3", "--batch", "2",
                      "--count", "2", "--work", str(tmp_path / "work")]) == 0
    info = json.loads((models / "shapes-sd-slim" / "tier.json").read_text())
    assert info["tier"] == "fast" and info["base_model"] == "shapes-sd"
    assert info["distill"]["steps"] == 3 and info["distill"]["guidance"] == 3.0
    assert info["parameters"] <= info["base_parameters"]
    assert info["step_time"]["batch"] == 2 and info["step_time_batch8"]["batch"] == 8
    assert info["quality"]["count"] == 2 and 0 <= info["quality"]["ssim_to_full"] <= 1
    pipe = StableDiffusionPipeline.from_pretrained(
        models / "shapes-sd-slim", local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    assert list(pipe.unet.config.block_out_channels) == info["block_out_channels"]
    assert tiers.slim_tier_of(ModelStore(models), "shapes-sd") == "shapes-sd-slim"
    with pytest.raises(SystemExit):
        slim.main(["--models", str(models), "--guidance", "-1"])


def test_the_shipped_weights_record_the_recipe_in_the_repository():
    """The committed models folder was made by this repository's shipped recipe and seed (a
    change of either needs new weights), and every stage ran to its last step."""
    import json

    from training.recipe import SHIPPED, STAGES

    shipped = Path(__file__).resolve().parents[1] / "assets" / "shapes-models"
    record = json.loads((shipped / "recipe.json").read_text())
    assert record["seed"] == 0
    assert record["recipe"] == json.loads(json.dumps(SHIPPED.to_dict()))
    for stage in STAGES:
        assert record["loss_curves"][stage][-1][0] == SHIPPED.steps[stage], stage
