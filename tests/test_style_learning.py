"""Does LoRA training on the embedded model actually learn a style? Measured, not eyeballed.

Two sample styles are trained with the "Quick demo (embedded model)" preset, then images
for 12 held-out prompts are scored with each style's metric at several adapter weights and
in a 50/50 blend. ``trainers.styles`` defines the prompts, the scoring and the checks, which
bench/style_sweep.py shares to compare preset variants.

The preset (``full`` coverage, rank 16, 600 steps at batch 2, lr 2e-3, caption dropout 0.2)
was chosen by bench/style_sweep.py on the H200 and confirmed on the 2-core CPU (see
BENCHMARKS.md), where each style trains in about 3 minutes (2026-12-03).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.generate import GenerationSession
from studio.mixer import AdapterWeights, BlendItem
from studio.models.loader import load_base
from studio.presets import get_preset
from studio.recipes import GenerationSettings
from studio.training.recipe import train
from trainers.styles import (
    CHECK_GUIDANCE,
    CHECK_STEPS,
    COLOUR_MIN,
    MOVED_MIN,
    check_scenes,
    check_weights,
    dataset_level,
    score_images,
    style_checks,
)

pytestmark = pytest.mark.slow

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"
A, B = "ink-outline", "halftone"
SCENES = check_scenes()


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
        GenerationSettings(s.caption, seed=i, steps=CHECK_STEPS, guidance=CHECK_GUIDANCE)
        for i, s in enumerate(SCENES)
    ]
    return [np.asarray(session.generate(s)[0].image) for s in settings]


@pytest.fixture(scope="module")
def scores(session):
    """metric name (or "colour") -> {setting -> mean}; see ``trainers.styles.score_images``."""
    images = {label: _render(session, weights) for label, weights in check_weights(A, B).items()}
    table = score_images(images, SCENES, (A, B))
    print(table)
    return table


@pytest.fixture(scope="module")
def checks(scores):
    return style_checks(scores, {name: dataset_level(name, SAMPLES) for name in (A, B)}, A, B)


@pytest.mark.parametrize("name", [A, B])
def test_full_weight_moves_the_metric_most_of_the_way_to_the_dataset(scores, checks, name):
    assert dataset_level(name, SAMPLES) > scores[name]["base"]
    assert checks[f"{name} moved"] >= MOVED_MIN, scores[name]


@pytest.mark.parametrize("name", [A, B])
def test_effect_grows_with_weight(scores, checks, name):
    assert checks[f"{name} grows"], scores[name]


@pytest.mark.parametrize("name", [A, B])
def test_content_is_kept(scores, checks, name):
    assert checks[f"{name} colour"] >= COLOUR_MIN, scores["colour"]


def test_half_half_blend_lies_between_the_two_styles_on_both_metrics(scores, checks):
    assert checks[f"{A} blend"] and checks[f"{B} blend"], {name: scores[name] for name in (A, B)}


def test_kohya_export_reimports_to_the_same_images(trained, session):
    """The trained (peft) model and the exported kohya file on a fresh base draw the same picture."""
    result = trained[A][0]
    scene = SCENES[0]
    for module in result.base.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    ddim = dict(
        num_inference_steps=CHECK_STEPS,
        guidance_scale=CHECK_GUIDANCE,
        width=128,
        height=128,
        output_type="np",
    )
    with torch.no_grad():
        ours = result.base.pipeline(scene.caption, generator=torch.Generator().manual_seed(0), **ddim).images[
            0
        ]
    session.set_blend(
        [BlendItem(i.adapter, AdapterWeights(weight=float(i.adapter.name == A))) for i in session.items]
    )
    settings = GenerationSettings(
        scene.caption, seed=0, steps=CHECK_STEPS, guidance=CHECK_GUIDANCE, scheduler="ddim"
    )
    theirs = np.asarray(session.generate(settings)[0].image).astype(np.float32) / 255
    assert np.abs(theirs - ours).mean() < 2 / 255 and np.abs(theirs - ours).max() < 0.1
