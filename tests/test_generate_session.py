"""Generation: determinism, schedulers, PNG infotext + recipe, and recipes that restore a blend."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from test_adapters_support import make_kohya, tiny

from studio.adapters import AdapterWarning
from studio.errors import StudioError
from studio.generate import GenerationSession, a1111_parameters, lora_tags, make_scheduler
from studio.mixer import AdapterWeights
from studio.recipes import AdapterEntry, GenerationSettings, Recipe, load_blend, read_recipe, save_recipe

FAST = GenerationSettings(prompt="a red circle", seed=7, steps=2, guidance=5.5, width=32, height=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapters")
    pipe = tiny("sd1")
    return (
        tmp,
        make_kohya(tmp / "ink.safetensors", pipe, "sd1", 1),
        make_kohya(tmp / "neon.safetensors", pipe, "sd1", 2),
    )


@pytest.fixture()
def session(files):
    _, ink, neon = files
    session = GenerationSession(tiny("sd1"), base="tiny-sd1")
    session.add_adapter(ink, AdapterWeights(0.8))
    session.add_adapter(neon, AdapterWeights(-0.3, text_encoder=0.5))
    return session


def pixels(result) -> np.ndarray:
    return np.asarray(result.image, dtype=np.int16)


def test_same_seed_same_image_and_batch_seeds_are_reproducible(session):
    batch = session.generate(replace(FAST, batch=2))
    again = session.generate(replace(FAST, batch=2))
    assert [r.recipe.settings.seed for r in batch] == [7, 8]
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(batch, again))
    assert not np.array_equal(pixels(batch[0]), pixels(batch[1]))
    alone = session.generate(replace(FAST, seed=8))[0]
    assert np.abs(pixels(alone) - pixels(batch[1])).max() <= 1  # image 1 of the batch, made again alone


def test_every_scheduler_runs_and_the_base_scheduler_is_kept(session):
    original = session.pipeline.scheduler
    for name, sampler in [
        ("euler-a", "Euler a"),
        ("dpm++2m-karras", "DPM++ 2M Karras"),
        ("ddim", "DDIM"),
        ("unipc", "UniPC"),
    ]:
        result = session.generate(replace(FAST, scheduler=name, steps=3))[0]
        assert f"Sampler: {sampler}," in result.parameters
        assert session.pipeline.scheduler is original
    dpm = make_scheduler("dpm++2m-karras", original.config)
    assert dpm.config.use_karras_sigmas and dpm.config.beta_schedule == original.config.beta_schedule
    with pytest.raises(StudioError, match="unknown scheduler 'plms'"):
        make_scheduler("plms", original.config)


def test_png_carries_infotext_and_recipe(session, tmp_path):
    settings = replace(FAST, negative="blurry, lowres")
    result = session.generate(settings)[0]
    path = result.save(tmp_path / "out.png")
    with Image.open(path) as image:
        text = image.text
    assert text["parameters"] == (
        "a red circle <lora:ink:0.8> <lora:neon:-0.15:-0.3>\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 2, Sampler: Euler a, CFG scale: 5.5, Seed: 7, Size: 32x32, Model: tiny-sd1"
    )
    recipe = read_recipe(path)
    assert recipe == result.recipe
    assert [(a.name, a.weights) for a in recipe.adapters] == [
        ("ink", AdapterWeights(0.8)),
        ("neon", AdapterWeights(-0.3, text_encoder=0.5)),
    ]
    assert recipe.adapters[0].sha256 == session.items[0].adapter.sha256


def test_recipe_restores_the_same_image(session, tmp_path):
    first = session.generate(FAST)[0]
    first.save(tmp_path / "first.png")
    recipe = read_recipe(tmp_path / "first.png")
    fresh = GenerationSession(tiny("sd1"), base=recipe.base)
    fresh.set_blend(load_blend(recipe, fresh.pipeline.components, fresh.family))
    assert np.array_equal(pixels(fresh.generate(recipe.settings)[0]), pixels(first))


def test_recipe_files_verify_hashes(session, tmp_path, files):
    recipe = session.generate(FAST)[0].recipe
    save_recipe(recipe, tmp_path / "blend.json")
    assert read_recipe(tmp_path / "blend.json") == recipe
    components, family = session.pipeline.components, session.family

    moved = Recipe(
        recipe.base,
        recipe.settings,
        [
            AdapterEntry(r.name, str(tmp_path / "gone" / "ink.safetensors"), r.sha256, r.weights)
            for r in recipe.adapters[:1]
        ],
    )
    with pytest.raises(StudioError, match="adapter 'ink' of the recipe is missing"):
        load_blend(moved, components, family, tmp_path / "blend.json")
    shutil.copy(files[1], tmp_path / "ink.safetensors")  # found beside the recipe
    assert load_blend(moved, components, family, tmp_path / "blend.json")[0].weights == AdapterWeights(0.8)

    changed = Recipe(recipe.base, recipe.settings, [AdapterEntry("ink", str(files[2]), "0" * 64)])
    with pytest.warns(AdapterWarning, match="changed since the recipe was made"):
        load_blend(changed, components, family)


def test_bad_recipes_and_settings_are_user_errors(session, tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StudioError, match="bad.json: bad recipe"):
        read_recipe(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(StudioError, match="unsupported recipe version"):
        read_recipe(tmp_path / "old.json")
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(StudioError, match="no studio recipe"):
        read_recipe(tmp_path / "plain.png")
    for bad, message in [({"steps": 0}, "steps"), ({"width": 30}, "multiple of 8"), ({"seed": -1}, "seed")]:
        with pytest.raises(StudioError, match=message):
            session.generate(replace(FAST, **bad))


def test_lora_tags_follow_a1111_syntax(session):
    recipe = session.generate(FAST)[0].recipe
    off = AdapterEntry("off", "x", "0", AdapterWeights(0.5, enabled=False))
    zero = AdapterEntry("zero", "x", "0", AdapterWeights(0.0))
    recipe = Recipe(recipe.base, recipe.settings, [*recipe.adapters, off, zero])
    assert lora_tags(recipe) == "<lora:ink:0.8> <lora:neon:-0.15:-0.3>"
    assert (
        a1111_parameters(recipe)
        .splitlines()[1]
        .startswith("Steps: 2, Sampler: Euler a, CFG scale: 5.5, Seed: 7")
    )


def test_slider_change_through_the_session(session):
    ink = session.items[0].adapter
    stats = session.set_weights("ink", AdapterWeights(0.2))
    assert stats.written == len(ink.layers)
    with pytest.raises(StudioError, match="no adapter named 'nope'"):
        session.set_weights("nope", AdapterWeights())
    with pytest.raises(StudioError, match="already in the blend"):
        session.add_adapter(ink.path)
    session.close()
    assert session.engine.patched_layers == set()
