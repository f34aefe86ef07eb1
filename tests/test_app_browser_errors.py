"""Errors and stale state in a real headless Chromium: the page stays usable, messages stay true.

Each user error (a PNG without a recipe, a zip with a ``..`` entry, a corrupt adapter, an
unknown hub id, a broken base model, a training job that fails) must show a toast naming
the file as the user knows it, and leave every component of the tab without Gradio's
error status and still taking input. A recipe with UNet block weights loads completely
and its blocks reach the generated PNG. Job messages and the progress panel follow the
jobs they speak of.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from test_app_support import CHROMIUM, CHROMIUM_ARGS, AppProcess, dataset_files, random_adapter

from studio.adapters import file_sha256
from studio.app import library
from studio.app.db import Database
from studio.app.workspace import Workspace
from studio.recipes import read_recipe
from studio.samples import make_demo_dataset

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from test_app_browser import SLOW, choose, field, set_number, wait_or_fail  # noqa: E402

pytestmark = pytest.mark.slow
expect = sync_api.expect
BLOCKS = {"down": 0.5, "mid": 0.0, "up.1": 1.5}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A workspace with a dataset, one adapter and a broken base model; the files a user drops."""
    root = tmp_path_factory.mktemp("errors")
    ws = Workspace.open(root / "ws")
    make_demo_dataset(ws.datasets / "shapes", count=4)
    ink = random_adapter(root / "ink.safetensors")
    library.import_file(ws, Database(ws.db_path), ink)
    (ws.models / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    recipe = {
        "version": 1, "base": "default",
        "settings": {"prompt": "a circle", "seed": 3, "steps": 2, "guidance": 5.0, "width": 32, "height": 32},
        "adapters": [{"name": "ink", "path": "/elsewhere/ink.safetensors", "sha256": file_sha256(ink),
                      "weight": 0.8, "unet": 1.0, "text_encoder": 1.0, "enabled": True, "blocks": BLOCKS}],
    }  # fmt: skip
    (root / "blocks.json").write_text(json.dumps(recipe))
    Image.new("RGB", (16, 16), "white").save(root / "box_01.png")
    with zipfile.ZipFile(root / "evil.zip", "w") as zf:
        zf.writestr("ok.txt", "a cat")
        zf.writestr("../../escape.txt", "x")
    (root / "broken_lora.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    return {"ws": ws.root, "recipe": root / "blocks.json", "plain": root / "box_01.png",
            "zip": root / "evil.zip", "lora": root / "broken_lora.safetensors", "drop": root / "drop"}  # fmt: skip


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
        yield page
        browser.close()


def toast(page, *parts: str, ws: Path) -> None:
    """A warning toast says all of ``parts`` and never the server's path of the workspace; then close it."""
    body = page.locator("[data-testid='toast-body']").first
    for part in parts:
        expect(body).to_contain_text(part, timeout=SLOW)
    assert str(ws) not in body.inner_text()
    assert "warning" in (body.get_attribute("class") or "")
    for close in page.locator("[data-testid='toast-close']").all():
        close.click()
    expect(page.locator("[data-testid='toast-body']")).to_have_count(0)


def usable(page, tab: str, text_field: str, dropdown: str, option: str) -> None:
    """No component of ``tab`` shows Gradio's error status, and its fields still take input."""
    expect(page.locator(f"#{tab} [data-testid='status-tracker'] .error")).to_have_count(0)
    field(page, text_field).fill("still typing")
    expect(field(page, text_field)).to_have_value("still typing")
    choose(page, dropdown, option)
    expect(page.locator(f"#{tab} [data-testid='status-tracker'] .error")).to_have_count(0)


def test_a_recipe_with_block_weights_loads_completely_and_reaches_the_png(app, page, files):
    page.get_by_role("tab", name="Mix").click()
    page.get_by_text("Recipe", exact=True).click()
    page.locator("#mix-recipe-drop input[type=file]").set_input_files(str(files["recipe"]))
    expect(page.locator("#mix-message")).to_contain_text("Restored the recipe (1 adapter(s), seed 3)")
    page.locator("#mix-parts-0").get_by_text("block strength").click()
    expect(field(page, "mix-weight-0")).to_have_value("0.8")
    for group, text in (("down", "0.5"), ("mid", "0"), ("up", "1:1.5")):
        expect(field(page, f"mix-{group}-0")).to_have_value(text)
    field(page, "mix-mid-0").fill("0.25")  # edited by hand, carried into the image
    before = set((files["ws"] / "samples").glob("*.png"))
    page.locator("#mix-generate").click()
    wait_or_fail(page, page.locator("#mix-gallery img").first)
    (made,) = set((files["ws"] / "samples").glob("*.png")) - before
    (entry,) = read_recipe(made).adapters
    assert (entry.name, entry.weights.weight, dict(entry.weights.blocks)) == (
        "ink",
        0.8,
        {**BLOCKS, "mid": 0.25},
    )


def test_mix_errors_leave_the_tab_usable(app, page, files):
    ws = files["ws"]
    page.locator("#mix-recipe-drop").get_by_role("button", name="Clear").click()  # the recipe loaded before
    page.locator("#mix-recipe-drop input[type=file]").set_input_files(str(files["plain"]))
    toast(page, "box_01.png", "carries no studio recipe", ws=ws)
    usable(page, "tab-mix", "mix-prompt", "mix-scheduler", "ddim")
    field(page, "mix-prompt").fill("a circle")
    field(page, "mix-hub").fill("nobody/nothing-here")
    page.locator("#mix-generate").click()
    toast(page, "nobody/nothing-here", ws=ws)
    usable(page, "tab-mix", "mix-negative", "mix-scheduler", "euler-a")
    field(page, "mix-hub").fill("")
    choose(page, "mix-base", "models/broken.safetensors")
    page.locator("#mix-generate").click()
    toast(page, "models/broken.safetensors", ws=ws)
    usable(page, "tab-mix", "mix-negative", "mix-base", "Embedded default model")
    expect(page.locator("#mix-gallery img")).to_have_count(1)  # the earlier image is still there


def test_library_import_of_a_corrupt_file_keeps_the_table(app, page, files):
    page.get_by_role("tab", name="Library").click()
    expect(page.locator("#library-table")).to_contain_text("ink")
    page.locator("#library-import input[type=file]").set_input_files(str(files["lora"]))
    toast(page, "broken_lora.safetensors", ws=files["ws"])
    expect(page.locator("#library-table")).to_contain_text("ink")
    usable(page, "tab-library", "library-new-name", "library-selected", "ink")
    expect(page.locator("#library-metadata")).to_contain_text("kohya")


def test_train_errors_and_a_failing_job_leave_the_tab_usable(app, page, files):
    ws = files["ws"]
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-sample").click()
    expect(field(page, "train-trigger")).to_have_value("inkstyle")
    page.locator("#train-upload input[type=file]").set_input_files(
        [str(p) for p in dataset_files(files["drop"], 2)]
    )
    expect(page.locator("#train-upload")).to_contain_text("shape_01", timeout=SLOW)
    field(page, "train-dataset-name").fill("mine")
    page.locator("#train-create").click()
    expect(page.locator("#train-message")).to_contain_text("Created dataset mine")
    expect(field(page, "train-trigger")).to_have_value("")  # the sample's trigger word does not carry over

    page.locator("#train-upload input[type=file]").set_input_files(str(files["zip"]))
    expect(page.locator("#train-upload")).to_contain_text("evil", timeout=SLOW)
    page.locator("#train-create").click()
    toast(page, "evil.zip", "'..' path", ws=ws)
    usable(page, "tab-train", "train-name", "train-dataset", "shapes")

    field(page, "train-hub").fill("nobody/nothing-here")  # offline: the worker cannot load it
    field(page, "train-name").fill("doomed")
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Queued job #1.")
    expect(page.locator("#train-message")).to_contain_text("Job #1 failed", timeout=SLOW)
    expect(page.locator("#train-progress .studio-progress")).to_have_attribute("data-status", "failed")
    usable(page, "tab-train", "train-name", "train-preset", "Style (SD 1.5)")
    field(page, "train-hub").fill("")


def test_stop_message_and_progress_follow_the_jobs(app, page, files):
    choose(page, "train-preset", "Quick demo (embedded model)")
    page.locator("#train-advanced").get_by_text("Advanced options").click()
    for elem_id, value in [("adv-steps", 100000), ("adv-resolution", 64), ("adv-batch-size", 1),
                           ("adv-sample-every", 0), ("adv-checkpoint-every", 0)]:  # fmt: skip
        field(page, elem_id).fill(str(value))
        field(page, elem_id).blur()
    field(page, "train-name").fill("long")
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Queued job #2.", timeout=SLOW)
    expect(page.locator("#train-message")).to_contain_text("Job #2 is running.", timeout=SLOW)
    set_number(page, "adv-steps", 2)
    field(page, "train-name").fill("short")
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Queued job #3.", timeout=SLOW)
    choose(page, "train-job", "#2 long")  # watch the running one
    expect(page.locator("#train-progress .studio-progress")).to_have_attribute("data-status", "running")
    page.locator("#train-stop").click()
    expect(page.locator("#train-message")).to_contain_text(
        "Job #2 stopped: stopped by the user; checkpoint saved at step", timeout=SLOW
    )
    text = page.locator("#train-progress .studio-progress-text")
    expect(text).to_contain_text("job #3 short", timeout=SLOW)  # the panel moved on to the next job
    expect(page.locator("#train-progress .studio-progress")).to_have_attribute(
        "data-status", "finished", timeout=SLOW
    )
    expect(page.locator("#tab-train [data-testid='status-tracker'] .error")).to_have_count(0)
