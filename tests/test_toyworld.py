"""The toyworld generator, its read-back, the style renderers/metrics and the shipped assets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainers.styles import STYLE_COLOURS, STYLES, object_colour, style_scene
from trainers.toyworld import (
    COLOURS,
    POSITIONS,
    SHAPES,
    held_out_scenes,
    is_held_out,
    render_scene,
    scene_at,
    training_scene,
    vocabulary,
)
from trainers.toyworld.analysis import read_single

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def test_world_has_the_required_variety():
    assert {"circle", "square", "triangle", "star", "ring", "cross", "diamond"} <= set(SHAPES)
    assert len(COLOURS) >= 10
    assert set(POSITIONS) == {"left", "right", "top", "bottom", "center"}
    scenes = [scene_at(0, i) for i in range(300)]
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    assert {s.background.bottom is None for s in scenes} == {True, False}  # plain and gradient


def test_scenes_are_deterministic_and_consistent():
    a, b = scene_at(5, 17), scene_at(5, 17)
    assert a == b and np.array_equal(render_scene(a), render_scene(b))
    assert scene_at(5, 17) != scene_at(5, 18)
    for i in range(200):
        scene = scene_at(1, i)
        positions = [o.position for o in scene.objects]
        assert len(set(positions)) == len(positions)
        assert not {o.colour for o in scene.objects} & set(scene.background.colours)


def test_caption_grammar():
    scene = next(
        s for s in (scene_at(2, i) for i in range(100)) if len(s.objects) == 2 and s.background.bottom
    )
    first, second = scene.objects
    assert scene.caption.startswith(f"a {first.size} {first.colour} {first.shape} ")
    assert f" and a {second.size} {second.colour} {second.shape} " in scene.caption
    assert scene.caption.endswith(f"{scene.background.top} to {scene.background.bottom} gradient background")
    words = set(vocabulary())
    for i in range(200):
        assert set(scene_at(3, i).caption.replace(",", "").split()) <= words


def test_held_out_captions_never_reach_training():
    held = list(held_out_scenes(50))
    assert len({s.caption for s in held}) == 50
    assert all(is_held_out(s.caption) and len(s.objects) == 1 for s in held)
    assert not any(is_held_out(training_scene(0, i).caption) for i in range(500))


def test_render_and_read_back_agree_with_ground_truth():
    for scene in held_out_scenes(40):
        image = render_scene(scene)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        reading = read_single(image)
        assert reading.background == scene.background.top
        assert reading.colour == scene.objects[0].colour
        ys, xs = np.nonzero(reading.mask)
        cx, cy = scene.objects[0].centre(128)
        assert abs(xs.mean() - cx) < 6 and abs(ys.mean() - cy) < 8


@pytest.mark.parametrize("name", list(STYLES))
def test_style_metric_is_high_for_its_style_and_low_for_plain_renders(name):
    style = STYLES[name]
    scenes = [style_scene(11, i) for i in range(12)]
    styled = np.mean([style.metric(style.render(s)) for s in scenes])
    plain = np.mean([style.metric(render_scene(s)) for s in scenes])
    others = [np.mean([style.metric(o.render(s)) for s in scenes]) for o in STYLES.values() if o is not style]
    assert styled > 5 * plain and styled > 2 * max(others)
    held = list(held_out_scenes(20, colours=STYLE_COLOURS))
    assert all(object_colour(style.render(s), s) == s.objects[0].colour for s in held)


@pytest.mark.parametrize("name", list(STYLES))
def test_sample_datasets_match_their_renderer(name):
    folder = ASSETS / "samples" / name
    images = sorted(folder.glob("*.png"))
    assert len(images) >= 20
    for index in (0, len(images) - 1):
        scene = style_scene(7, index)
        assert np.array_equal(
            np.asarray(Image.open(images[index]).convert("RGB")), STYLES[name].render(scene)
        )
        caption = images[index].with_suffix(".txt").read_text().strip()
        assert caption == scene.caption and name.split("-")[0] not in caption.split()


def test_shipped_model_is_a_small_sd1_diffusers_folder():
    folder = ASSETS / "default-model"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"][1] == "UNet2DConditionModel" and index["vae"][1] == "AutoencoderKL"
    assert index["text_encoder"][1] == "CLIPTextModel" and index["tokenizer"][1] == "CLIPTokenizer"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 1000**2
    assert max(p.stat().st_size for p in files) <= 15 * 1000**2
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert vae["latent_channels"] == 4 and len(vae["block_out_channels"]) == 4  # 8x downsampling


def test_shipped_tokenizer_loads_with_its_full_vocabulary():
    from transformers import CLIPTokenizer

    folder = ASSETS / "default-model" / "tokenizer"
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text())
    assert len(tokenizer) == len(vocab)
    ids = tokenizer("a large red circle on the left, on an orange background").input_ids
    assert len(ids) == 2 + 12  # every grammar word is one token
