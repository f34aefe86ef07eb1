"""Does LoRA training on the embedded model actually learn a style? Measured, not eyeballed.

Two sample styles are trained with the "Quick demo (embedded model)" preset, then images
for held-out prompts are scored with each style's metric (see ``studio.styles``) at
several adapter weights and in a 50/50 blend.

Opt-in (``STUDIO_STYLE_TESTS=1``): on 2026-11-24 most of issue 5's thresholds were not met
yet and the module took 33 minutes on the shared 2-core machine, far over CI's budget;
see BENCHMARKS.md, "Style learning on the embedded model".
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studio.generate import GenerationSession
from studio.mixer import AdapterWeights, BlendItem
from studio.models.loader import load_base
from studio.presets import get_preset
from studio.recipes import GenerationSettings
from studio.styles import STYLE_COLOURS, STYLES, object_colour
from studio.toyworld import held_out_scenes
from trainers.lora_recipe import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("STUDIO_STYLE_TESTS"),
        reason="opt-in: set STUDIO_STYLE_TESTS=1 (see module docstring)",
    ),
]

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"
A, B = "ink-outline", "halftone"
SCENES = list(held_out_scenes(6, seed=3, colours=STYLE_COLOURS))
STEPS, GUIDANCE = 20, 5.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("styles")
    runs = {}
    for name in (A, B):
        config = get_preset("Quick demo (embedded model)").apply(
            data=str(SAMPLES / name), output=str(root / f"{name}.safetensors"), sample_every=0
        )
        started = time.time()
        result = train(config)
        runs[name] = (result, time.time() - started)
    return runs


@pytest.fixture(scope="module")
def session(trained):
    base = load_base("default")
    session = GenerationSession(base.pipeline, "default")
    for name in (A, B):
        session.add_adapter(trained[name][0].outputs[0], AdapterWeights(weight=0.0), name=name)
    yield session
    session.close()


def _render(session: GenerationSession, weights: dict[str, float]) -> list[np.ndarray]:
    session.set_blend(
        [
            BlendItem(item.adapter, AdapterWeights(weight=weights.get(item.adapter.name, 0.0)))
            for item in session.items
        ]
    )
    settings = [
        GenerationSettings(s.caption, seed=i, steps=STEPS, guidance=GUIDANCE) for i, s in enumerate(SCENES)
    ]
    return [np.asarray(session.generate(s)[0].image) for s in settings]


@pytest.fixture(scope="module")
def scores(session):
    """metric name -> {setting -> mean metric}, plus colour accuracy per setting."""
    settings = {
        "base": {},
        f"{A} 0.5": {A: 0.5},
        f"{A} 1.0": {A: 1.0},
        f"{B} 0.5": {B: 0.5},
        f"{B} 1.0": {B: 1.0},
        "blend": {A: 0.5, B: 0.5},
    }
    images = {label: _render(session, weights) for label, weights in settings.items()}
    table = {
        name: {
            label: float(np.mean([STYLES[name].metric(im) for im in ims])) for label, ims in images.items()
        }
        for name in (A, B)
    }
    table["colour"] = {
        label: float(np.mean([object_colour(im, s) == s.objects[0].colour for im, s in zip(ims, SCENES)]))
        for label, ims in images.items()
    }
    print(table)
    return table


def _dataset_level(name: str) -> float:
    paths = sorted((SAMPLES / name).glob("*.png"))
    return float(np.mean([STYLES[name].metric(np.asarray(Image.open(p).convert("RGB"))) for p in paths]))


@pytest.mark.parametrize("name", [A, B])
def test_training_one_style_takes_under_three_minutes(trained, name):
    assert trained[name][1] <= 180


@pytest.mark.parametrize("name", [A, B])
def test_full_weight_moves_the_metric_most_of_the_way_to_the_dataset(scores, name):
    base, full, target = scores[name]["base"], scores[name][f"{name} 1.0"], _dataset_level(name)
    assert target > base
    assert (full - base) / (target - base) >= 0.6


@pytest.mark.parametrize("name", [A, B])
def test_effect_grows_with_weight(scores, name):
    assert scores[name]["base"] < scores[name][f"{name} 0.5"] < scores[name][f"{name} 1.0"]


@pytest.mark.parametrize("name", [A, B])
def test_content_is_kept(scores, name):
    assert scores["colour"][f"{name} 1.0"] >= 0.7


def test_half_half_blend_lies_between_the_two_styles_on_both_metrics(scores):
    for name, other in ((A, B), (B, A)):
        assert scores[name][f"{other} 1.0"] < scores[name]["blend"] < scores[name][f"{name} 1.0"]


def test_kohya_export_reimports_to_the_same_images(trained, session):
    """The trained (peft) model and the exported kohya file on a fresh base draw the same picture."""
    result = trained[A][0]
    scene = SCENES[0]
    for module in result.base.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    ddim = dict(num_inference_steps=STEPS, guidance_scale=GUIDANCE, width=128, height=128, output_type="np")
    with torch.no_grad():
        ours = result.base.pipeline(scene.caption, generator=torch.Generator().manual_seed(0), **ddim).images[
            0
        ]
    session.set_blend(
        [BlendItem(i.adapter, AdapterWeights(weight=float(i.adapter.name == A))) for i in session.items]
    )
    settings = GenerationSettings(scene.caption, seed=0, steps=STEPS, guidance=GUIDANCE, scheduler="ddim")
    theirs = np.asarray(session.generate(settings)[0].image).astype(np.float32) / 255
    assert np.abs(theirs - ours).mean() < 2 / 255 and np.abs(theirs - ours).max() < 0.1
