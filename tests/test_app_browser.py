"""End to end in a real headless Chromium: upload, caption, train, library, mix, recipe, bake, download.

Runs the app as ``python app.py`` and drives it only through the page, the way a user
does; files on disk are checked afterwards with the project's own readers. Screenshots
of each tab are saved as test artifacts (and, with ``STUDIO_DOCS_SCREENSHOTS=DIR``, as
small PNGs for the README).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_app_support import CHROMIUM, CHROMIUM_ARGS, AppProcess, dataset_files, random_adapter

from studio.formats.inspect import inspect_file
from studio.presets import PRESETS
from studio.recipes import read_recipe

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.slow
expect = sync_api.expect
SLOW = 300_000  # ms: training and first model load on a busy 2-core machine
QUICK = PRESETS["Quick demo (embedded model)"].values  # the preset the test picks


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    server = AppProcess(tmp_path_factory.mktemp("browser") / "ws")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(app):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(60_000)
        page.goto(app.url)
        page.wait_for_selector("#tab-train", state="attached")
        yield page
        browser.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


def field(page, elem_id: str):
    return page.locator(f"#{elem_id} input, #{elem_id} textarea").first


def set_number(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def choose(page, elem_id: str, option: str) -> None:
    field(page, elem_id).click()
    page.locator(f"#{elem_id}").get_by_role("option", name=option).first.click()


def wait_or_fail(page, target, timeout: float = SLOW) -> None:
    """Wait for ``target``, but stop at once with its text when the app shows an error toast."""
    toast = page.locator("[data-testid='toast-body']")
    target.or_(toast).first.wait_for(timeout=timeout)
    if toast.count():
        raise AssertionError("the app showed an error: " + toast.first.inner_text())


def screenshot(page, artifacts: Path, name: str) -> None:
    page.wait_for_timeout(800)
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    docs = os.environ.get("STUDIO_DOCS_SCREENSHOTS")
    if docs:  # small palette PNGs for the README
        with Image.open(path) as image:
            image = image.crop((0, 0, image.width, min(image.height, 1500)))
            image = image.resize((image.width * 2 // 3, image.height * 2 // 3), Image.LANCZOS)
            image.quantize(colors=128).save(Path(docs) / f"{name}.png", optimize=True)


def test_train_mix_library_in_a_real_browser(app, page, artifacts, tmp_path):
    ws = app.workspace
    # 1. The sample dataset is one click away; then upload our own, fix a caption, prepend the trigger, save.
    page.locator("#train-sample").click()
    expect(page.locator("#train-message")).to_contain_text("Created dataset sample-shapes")
    expect(page.locator("#train-captions")).to_contain_text("shape_07.png")
    assert len(list((ws / "datasets/sample-shapes").glob("*.png"))) == 8
    page.locator("#train-upload input[type=file]").set_input_files(
        [str(p) for p in dataset_files(tmp_path / "drop", 6)]
    )
    expect(page.locator("#train-upload")).to_contain_text("shape_05", timeout=SLOW)  # the upload has finished
    expect(page.locator("#train-upload")).not_to_contain_text("Uploading")
    field(page, "train-dataset-name").fill("shapes")
    page.locator("#train-create").click()
    expect(page.locator("#train-message")).to_contain_text("Created dataset shapes with 12 files")
    expect(page.locator("#train-captions")).to_contain_text("a square on a red background")
    expect(page.locator("#train-report")).to_contain_text("resolution 128")  # the preset's, not a default
    expect(page.locator("#train-report")).to_contain_text("Dataset datasets/shapes")  # not the server's path
    page.locator("#train-captions").get_by_text("a square on a red background").dblclick()
    editor = page.locator("#train-captions textarea, #train-captions input[type=text]").first
    editor.wait_for()  # the cell editor is open
    editor.fill("a red square")
    editor.press("Enter")
    expect(page.locator("#train-captions")).to_contain_text("a red square")
    field(page, "train-trigger").fill("inkstyle")
    page.locator("#train-prepend").click()
    expect(page.locator("#train-captions")).to_contain_text("inkstyle, a red square")
    page.locator("#train-save").click()
    expect(page.locator("#train-message")).to_contain_text("Saved 6 caption file(s)")
    expect(page.locator("#train-report")).to_contain_text("resolution 128")
    assert (ws / "datasets/shapes/shape_01.txt").read_text() == "inkstyle, a red square\n"

    # 2. Train a few steps on the embedded model; watch progress reach 100%.
    page.locator("#train-advanced").get_by_text("Advanced options").click()
    choose(page, "train-preset", "Style (SD 1.5)")  # a preset fills the advanced options
    expect(field(page, "adv-steps")).to_have_value("1500")
    expect(field(page, "adv-resolution")).to_have_value("512")
    choose(page, "train-preset", "Quick demo (embedded model)")
    expect(field(page, "adv-steps")).to_have_value(str(QUICK["steps"]))
    for elem_id, value in [
        ("adv-steps", 3), ("adv-resolution", 64), ("adv-batch-size", 2), ("adv-sample-every", 3),
        ("adv-sample-steps", 2), ("adv-checkpoint-every", 0), ("adv-sample-prompts", "inkstyle"),
    ]:  # fmt: skip
        field(page, elem_id).fill(str(value))
        field(page, elem_id).blur()
        expect(field(page, elem_id)).to_have_value(str(value))
    field(page, "train-name").fill("ink")
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Queued job #1")
    progress = page.locator("#train-progress .studio-progress")
    ended = ":is([data-status=finished], [data-status=failed], [data-status=interrupted])"
    wait_or_fail(page, page.locator(f"#train-progress .studio-progress{ended}"))
    expect(progress).to_have_attribute("data-status", "finished")
    expect(progress).to_have_attribute("data-percent", "100")
    expect(progress).to_contain_text("step 3/3")
    expect(page.locator("#train-samples img").first).to_be_visible()
    expect(page.locator("#train-log")).to_contain_text("finished")
    page.locator("#train-advanced").get_by_text("Advanced options").click()  # fold it for the screenshot
    screenshot(page, artifacts, "train")

    # 3. The adapter is in the library, with its facts and thumbnail; import a second one.
    page.get_by_role("tab", name="Library").click()
    table = page.locator("#library-table")
    expect(table).to_contain_text("inkstyle")
    expect(table).to_contain_text("SD1")
    expect(page.locator("#library-thumbs img").first).to_be_visible()
    page.locator("#library-import input[type=file]").set_input_files(
        str(random_adapter(tmp_path / "neon.safetensors"))
    )
    expect(page.locator("#library-message")).to_contain_text("Imported neon")
    expect(table).to_contain_text("neon")

    # 4. Download the kohya export and check it with the project's inspector.
    choose(page, "library-selected", "ink")
    expect(page.locator("#library-metadata")).to_contain_text("modelspec.trigger_phrase")
    with page.expect_download() as download:
        page.locator("#library-download").click()
    exported = tmp_path / "exported.safetensors"
    download.value.save_as(exported)
    report = inspect_file(exported)
    assert (report.format, report.family, report.ranks) == ("kohya LoRA", "SD1", [QUICK["rank"]])
    assert report.metadata["modelspec.trigger_phrase"] == "inkstyle"
    assert report.metadata["ss_num_train_images"] == "6"
    screenshot(page, artifacts, "library")

    # 5. Mix two adapters at two slider settings: two different images.
    page.get_by_role("tab", name="Mix").click()
    choose(page, "mix-adapter-0", "ink (")
    choose(page, "mix-adapter-1", "neon (")
    set_number(page, "mix-steps", 2)
    field(page, "mix-width").fill("32")
    field(page, "mix-height").fill("32")
    field(page, "mix-seed").fill("7")
    images, made_files = [], []
    for weights in ((1.0, 0.5), (-1.0, 1.5)):
        set_number(page, "mix-weight-0", weights[0])
        set_number(page, "mix-weight-1", weights[1])
        before = set((ws / "samples").glob("*.png"))
        page.locator("#mix-generate").click()
        wait_or_fail(page, page.locator("#mix-gallery img").nth(len(images)))
        (made,) = set((ws / "samples").glob("*.png")) - before
        made_files.append(made)
        recipe = read_recipe(made)
        assert [(a.name, a.weights.weight) for a in recipe.adapters] == [
            ("ink", weights[0]),
            ("neon", weights[1]),
        ]
        assert recipe.settings.seed == 7
        images.append(np.asarray(Image.open(made), dtype=np.int16))
    assert images[0].shape == (32, 32, 3)
    assert np.abs(images[0] - images[1]).mean() > 1.0, "different sliders must give different images"

    # 6. Dropping the first PNG restores its sliders; bake the blend into one file.
    page.get_by_text("Recipe", exact=True).click()
    page.locator("#mix-recipe-drop input[type=file]").set_input_files(str(made_files[0]))
    expect(page.locator("#mix-message")).to_contain_text("Restored the recipe (2 adapter(s), seed 7)")
    expect(page.locator("#mix-weight-0 input[type=number]")).to_have_value("1")
    expect(page.locator("#mix-weight-1 input[type=number]")).to_have_value("0.5")
    page.locator("#mix-save-recipe").click()
    expect(page.locator("#mix-message")).to_contain_text("Saved recipe recipes/my-blend.json")
    set_number(page, "mix-weight-0", 2.0)
    choose(page, "mix-saved-recipes", "my-blend")
    page.locator("#mix-load-recipe").click()
    expect(page.locator("#mix-weight-0 input[type=number]")).to_have_value("1")
    page.get_by_text("Bake the blend into one file").click()
    page.locator("#mix-bake").click()
    expect(page.locator("#mix-message")).to_contain_text("Baked adapters/my-blend.safetensors")
    baked = inspect_file(ws / "adapters" / "my-blend.safetensors")
    assert baked.metadata["studio.bake_method"] == "exact"
    assert max(baked.ranks) == QUICK["rank"] + 4  # ink + neon (rank 4), concatenated where both touch a layer
    screenshot(page, artifacts, "mix")
    # Everything the app wrote is inside the workspace (its cwd is the folder above it).
    assert sorted(p.name for p in ws.parent.iterdir()) == [app.log.name, "ws"]
    print(f"screenshots: {artifacts}")
