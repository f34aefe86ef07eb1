"""The Mix tab in a real headless Chromium: results at their own size, trigger words, slots,
LoRA Block Weight vectors, and a recipe that carries them.

A 128 px result must be drawn at 128 px (neither enlarged nor cropped) and open larger on a
click; an adapter's trigger word is shown in its slot and one click puts it in the prompt;
slots are added (up to 8) and removed; an A1111 block-weight vector changes the image and
rides in its PNG; a bad vector is one message and no component shows an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_adapters_support import make_kohya
from test_app_support import CHROMIUM, CHROMIUM_ARGS, AppProcess

from studio.adapters import file_sha256
from studio.app import library
from studio.app.db import Database
from studio.app.workspace import Workspace
from studio.recipes import read_recipe

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from test_app_browser import SLOW, choose, field, screenshot, set_number, wait_or_fail  # noqa: E402
from test_app_browser_errors import toast  # noqa: E402

pytestmark = pytest.mark.slow
expect = sync_api.expect
VECTOR = "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0.5,0.5"  # 17 values (SD 1.x)
TAGS = {"10_ink": {"inkstyle": 6, "circle": 4, "square": 2}}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Three adapters in the library ("ink" says its trigger and tags) and a recipe that uses all three."""
    from studio.models.loader import load_base

    root = tmp_path_factory.mktemp("mix")
    ws = Workspace.open(root / "ws")
    db, pipe = Database(ws.db_path), load_base("default").pipeline
    metadata = {"modelspec.trigger_phrase": "inkstyle", "ss_tag_frequency": json.dumps(TAGS)}
    made = {
        "ink": make_kohya(root / "ink.safetensors", pipe, "sd1", 3, metadata=metadata, std=0.4),
        "neon": make_kohya(root / "neon.safetensors", pipe, "sd1", 4),
        "paper": make_kohya(root / "paper.safetensors", pipe, "sd1", 5),
    }
    for path in made.values():
        library.import_file(ws, db, path)
    save_file(
        {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(ws.models / "v1.safetensors")
    )
    settings = {"prompt": "a circle", "seed": 3, "steps": 2, "guidance": 5.0, "width": 32, "height": 32}
    entries = [
        {"name": name, "path": f"/elsewhere/{name}.safetensors", "sha256": file_sha256(path), "weight": 0.5,
         **({"lbw": lbw} if lbw else {})}
        for (name, path), lbw in zip(made.items(), [VECTOR, "INS", ""], strict=True)
    ]  # fmt: skip
    (root / "lbw.json").write_text(
        json.dumps({"version": 1, "base": "default", "settings": settings, "adapters": entries})
    )
    return {"ws": ws.root, "recipe": root / "lbw.json"}


@pytest.fixture(scope="module")
def app(files):
    server = AppProcess(files["ws"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(app):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(app.url)
        page.wait_for_selector("#tab-train", state="attached")
        page.get_by_role("tab", name="Mix").click()
        yield page
        browser.close()


def generate(page, ws: Path) -> Path:
    """Click Generate; the new sample file once the gallery shows one more image."""
    before = set((ws / "samples").glob("*.png"))
    shown = page.locator("#mix-gallery .thumbnail-item img").count()
    page.locator("#mix-generate").click()
    wait_or_fail(page, page.locator("#mix-gallery .thumbnail-item img").nth(shown))
    (made,) = set((ws / "samples").glob("*.png")) - before
    return made


def no_error_status(page) -> None:
    expect(page.locator("#tab-mix [data-testid='status-tracker'] .error")).to_have_count(0)


def test_native_size_trigger_words_and_slots(page, files, tmp_path):
    ws = files["ws"]
    choose(page, "mix-adapter-0", "ink (")
    expect(page.locator("#mix-triggers-0")).to_contain_text("Trigger: inkstyle · tags: circle, square")
    field(page, "mix-prompt").fill("a red square")
    page.locator("#mix-insert-0").click()
    expect(field(page, "mix-prompt")).to_have_value("a red square, inkstyle")
    page.locator("#mix-insert-0").click()
    expect(page.locator("#mix-message")).to_contain_text("inkstyle is already in the prompt")
    expect(field(page, "mix-prompt")).to_have_value("a red square, inkstyle")

    expect(page.locator("#mix-slot-2")).to_be_hidden()
    page.locator("#mix-add-slot").click()
    expect(page.locator("#mix-slot-2")).to_be_visible()
    choose(page, "mix-adapter-2", "paper (")
    page.locator("#mix-remove-slot").click()
    expect(page.locator("#mix-slot-2")).to_be_hidden()

    set_number(page, "mix-steps", 2)
    made = generate(page, ws)  # width/height 0: the embedded model's own 128 px
    assert Image.open(made).size == (128, 128)
    assert [a.name for a in read_recipe(made).adapters] == ["ink"]  # the removed slot was emptied
    thumb = page.locator("#mix-gallery .thumbnail-item img").first
    drawn = thumb.evaluate(
        """async img => { await img.decode(); const r = img.getBoundingClientRect(), fit = getComputedStyle(img).objectFit;
                    const k = fit === 'scale-down' ? Math.min(1, r.width / img.naturalWidth, r.height / img.naturalHeight)
                            : fit === 'none' ? 1 : NaN;
                    return [img.naturalWidth, img.naturalWidth * k, img.naturalHeight * k]; }"""
    )
    assert drawn == [128, 128, 128], f"a 128 px result must be drawn at 128 px, got {drawn}"
    thumb.click()  # click to enlarge
    preview = page.locator("#mix-gallery img").first
    expect(preview).to_be_visible()
    enlarged = page.locator("#mix-gallery img").evaluate_all(
        "imgs => Math.max(...imgs.map(i => i.getBoundingClientRect().width))"
    )
    assert enlarged > 128
    page.keyboard.press("Escape")
    no_error_status(page)


def test_a_block_weight_vector_changes_the_image_and_a_bad_one_is_one_message(page, files):
    ws = files["ws"]
    field(page, "mix-width").fill("32")
    field(page, "mix-height").fill("32")
    field(page, "mix-seed").fill("7")
    plain = generate(page, ws)
    page.locator("#mix-parts-0").get_by_text("block strength").click()
    field(page, "mix-lbw-0").fill("MIDD")
    weighted = generate(page, ws)
    (entry,) = read_recipe(weighted).adapters
    assert entry.weights.lbw == "MIDD"
    assert "<lora:ink:1:lbw=MIDD>" in Image.open(weighted).text["parameters"]
    a, b = (np.asarray(Image.open(p), dtype=np.int16) for p in (plain, weighted))
    assert np.abs(a - b).mean() > 1.0, "a block-weight vector must change the image"

    field(page, "mix-lbw-0").fill("1,0,1")
    page.locator("#mix-generate").click()
    toast(page, "adapter 1 (ink): block weight vector: 3 values, but it needs 12, 17, 20 or 26", ws=ws)
    expect(page.locator("[data-testid='toast-body']")).to_have_count(0)
    no_error_status(page)
    expect(page.locator("#mix-gallery .thumbnail-item img")).to_have_count(3)  # the images stay
    expect(field(page, "mix-lbw-0")).to_have_value("1,0,1")  # the field keeps what was typed
    field(page, "mix-lbw-0").fill("")


def test_a_recipe_with_block_weight_vectors_restores_every_slot(page, files, tmp_path_factory):
    page.get_by_text("Recipe", exact=True).click()
    page.locator("#mix-recipe-drop input[type=file]").set_input_files(str(files["recipe"]))
    expect(page.locator("#mix-message")).to_contain_text(
        "Restored the recipe (3 adapter(s), seed 3)", timeout=SLOW
    )
    expect(page.locator("#mix-slot-2")).to_be_visible()  # a third slot opened for the third adapter
    for i, lbw in enumerate([VECTOR, "INS", ""]):
        if not field(page, f"mix-lbw-{i}").is_visible():
            page.locator(f"#mix-parts-{i}").get_by_text("block strength").click()
        expect(field(page, f"mix-lbw-{i}")).to_have_value(lbw)
    expect(page.locator("#mix-triggers-0")).to_contain_text("inkstyle")
    made = generate(page, files["ws"])
    assert [a.weights.lbw for a in read_recipe(made).adapters] == [VECTOR, "INS", ""]
    no_error_status(page)
    screenshot(page, tmp_path_factory.mktemp("shots"), "mix")


def test_models_a_checkpoint_gets_a_config_choice_and_a_download_offline_is_one_line(page, files):
    """The app runs with HF_HUB_OFFLINE=1 (as the suite does)."""
    choose(page, "mix-base", "models/v1.safetensors (checkpoint, sd1)")
    expect(page.locator("#mix-base-config")).to_be_visible()
    expect(field(page, "mix-base-config")).to_have_value(
        "auto: diffusers' config for sd1 (needs the network or its cache)"
    )
    choose(page, "mix-base-config", "config of Embedded default model")
    choose(page, "mix-base", "Embedded default model")
    expect(page.locator("#mix-base-config")).to_be_hidden()
    field(page, "mix-hub").fill("someone/big-model")
    page.locator("#mix-download").click()
    toast(
        page,
        "cannot download 'someone/big-model': this machine is offline",
        "workspace's models/ folder",
        ws=files["ws"],
    )
    no_error_status(page)
    field(page, "mix-hub").fill("")
    page.get_by_role("tab", name="Train").click()  # the Train tab's base picker offers the same choice
    expect(page.locator("#train-base-config")).to_be_hidden()
    choose(page, "train-base", "models/v1.safetensors (checkpoint, sd1)")
    expect(page.locator("#train-base-config")).to_be_visible()
    choose(page, "train-base-config", "config of Embedded default model")
    choose(page, "train-base", "Embedded default model")
    expect(page.locator("#train-base-config")).to_be_hidden()
    no_error_status(page)
    page.get_by_role("tab", name="Mix").click()
