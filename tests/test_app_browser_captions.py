"""Caption an uploaded uncaptioned dataset in the app and train on it (issue 15 item 4), in a
real headless Chromium: the embedded default captioner writes the sidecars, the table shows and
still edits them, a captioner that cannot be loaded offline is one message, and the job trains."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from test_app_support import CHROMIUM, AppProcess, train_tab_page

from studio.app.workspace import Workspace
from trainers.toyworld import render_scene, scene_at

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from test_app_browser import SLOW, choose, field, wait_or_fail  # noqa: E402
from test_app_browser_errors import toast  # noqa: E402

pytestmark = pytest.mark.slow
expect = sync_api.expect


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    server = AppProcess(Workspace.open(tmp_path_factory.mktemp("captions") / "ws").root)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(app):
    with train_tab_page(app.url) as page:
        yield page


def no_error_status(page) -> None:
    expect(page.locator("#tab-train [data-testid='status-tracker'] .error")).to_have_count(0)


def test_uncaptioned_upload_is_captioned_edited_and_trained_on(app, page, tmp_path):
    ws = app.workspace
    renders = tmp_path / "renders"
    renders.mkdir()
    for i in range(4):  # toyworld scenes the captioner never trained on (it trained on seed 7)
        Image.fromarray(render_scene(scene_at(99, i))).save(renders / f"scene_{i}.png")
    page.locator("#train-upload input[type=file]").set_input_files(
        [str(p) for p in sorted(renders.iterdir())]
    )
    expect(page.locator("#train-upload")).to_contain_text("scene_3", timeout=SLOW)
    expect(page.locator("#train-upload")).not_to_contain_text("Uploading")
    field(page, "train-dataset-name").fill("renders")
    page.locator("#train-create").click()
    expect(page.locator("#train-message")).to_contain_text(
        "Created dataset renders with 4 files", timeout=SLOW
    )
    folder = ws / "datasets" / "renders"
    assert not list(folder.glob("*.txt"))

    # A captioner that is not here offline: one message, the table and the files as they were.
    choose(page, "train-captioner", "default")
    field(page, "train-captioner").fill("nobody/no-such-captioner")
    field(page, "train-captioner").press("Enter")
    page.locator("#train-caption").click()
    toast(page, "nobody/no-such-captioner", "offline", ws=ws)
    no_error_status(page)
    assert not list(folder.glob("*.txt"))

    # The embedded captioner; the trigger word first.
    choose(page, "train-captioner", "default")
    field(page, "train-trigger").fill("inkstyle")
    page.locator("#train-caption-prefix label, #train-caption-prefix input").first.click()
    page.locator("#train-caption").click()
    expect(page.locator("#train-message")).to_contain_text("Captioned 4 image(s) with default", timeout=SLOW)
    captions = {p.stem: p.read_text().strip() for p in folder.glob("*.txt")}
    assert len(captions) == 4 and all(
        text.startswith("inkstyle, ") and "background" in text for text in captions.values()
    )
    expect(page.locator("#train-captions")).to_contain_text(captions["scene_0"])
    no_error_status(page)

    # Only missing captions by default: an edited caption survives a second pass, and stays editable.
    page.locator("#train-captions").get_by_text(captions["scene_1"]).dblclick()
    editor = page.locator("#train-captions textarea, #train-captions input[type=text]").first
    editor.wait_for()
    editor.fill("inkstyle, a hand-written caption")
    editor.press("Enter")
    page.locator("#train-save").click()
    expect(page.locator("#train-message")).to_contain_text("Saved 1 caption file(s)", timeout=SLOW)
    page.locator("#train-caption").click()
    expect(page.locator("#train-message")).to_contain_text(
        "captioned 0 image(s)", ignore_case=True, timeout=SLOW
    )
    assert (folder / "scene_1.txt").read_text().strip() == "inkstyle, a hand-written caption"

    # Train on it.
    choose(page, "train-preset", "Quick demo (embedded model)")
    page.locator("#train-advanced").get_by_text("Advanced options").click()
    for elem_id, value in [("adv-steps", 2), ("adv-resolution", 64), ("adv-batch-size", 2), ("adv-sample-every", 0),
                           ("adv-checkpoint-every", 0)]:  # fmt: skip
        field(page, elem_id).fill(str(value))
        field(page, elem_id).blur()
    field(page, "train-name").fill("captioned")
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Queued job #1", timeout=SLOW)
    ended = ":is([data-status=finished], [data-status=failed], [data-status=interrupted])"
    wait_or_fail(page, page.locator(f"#train-progress .studio-progress{ended}"))
    expect(page.locator("#train-progress .studio-progress")).to_have_attribute("data-status", "finished")
    assert list((ws / "adapters").rglob("captioned*.safetensors"))
