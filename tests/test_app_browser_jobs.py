"""Jobs you can trust, in a real headless Chromium (issue 17 items 2-4).

One app and one page for the module. The Train tab's settings come back after a reload;
a queued job shows its place in the queue, a cancelled one resumes by starting over and
says so; "Save checkpoint now" writes the running job's current step, and after the worker
is killed Resume continues from exactly that step; the loss plot has numeric axes with the
raw and the smoothed loss; "Train again" fills the form with a job's settings; a preset
for another base switches the base when one fits, or warns with the estimated time.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from test_app_support import CHROMIUM, AppProcess, train_tab_page, wait_for

from studio.app.db import Database
from studio.app.workspace import Workspace
from studio.samples import make_demo_dataset

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from test_app_browser import SLOW, choose, field  # noqa: E402

pytestmark = pytest.mark.slow
expect = sync_api.expect


def _fake_sd15(folder: Path) -> None:
    """Config files of a 512 px SD 1.x folder: what the base picker reads (never loaded here)."""
    for part, config in (("unet", {"sample_size": 64, "cross_attention_dim": 768}),
                         ("vae", {"block_out_channels": [128, 256, 512, 512]})):  # fmt: skip
        (folder / part).mkdir(parents=True)
        (folder / part / "config.json").write_text(json.dumps(config))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    ws = Workspace.open(tmp_path_factory.mktemp("jobs") / "ws")
    make_demo_dataset(ws.datasets / "shapes", count=2)
    _fake_sd15(ws.models / "sd15")
    server = AppProcess(ws.root)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(app):
    with train_tab_page(app.url) as page:
        yield page


@pytest.fixture(scope="module")
def db(app) -> Database:
    return Database(app.workspace / "studio.db")


def fill(page, values: dict[str, object]) -> None:
    for elem_id, value in values.items():
        field(page, elem_id).fill(str(value))
        field(page, elem_id).blur()
        expect(field(page, elem_id)).to_have_value(str(value))


def message(page):
    return page.locator("#train-message")


def test_the_settings_survive_a_reload(app, page):
    choose(page, "train-dataset", "shapes")
    choose(page, "train-preset", "Quick demo (embedded model)")
    page.locator("#train-advanced").get_by_text("Advanced options").click()
    fill(page, {"adv-steps": 7, "adv-resolution": 64, "adv-sample-prompts": "a\nb", "train-name": "kept",
                "train-trigger": "inkstyle"})  # fmt: skip
    page.wait_for_timeout(500)  # the page writes localStorage on each change
    page.reload()
    page.wait_for_selector("#tab-train", state="attached")
    expect(field(page, "train-name")).to_have_value("kept", timeout=30_000)
    expect(field(page, "train-trigger")).to_have_value("inkstyle")
    expect(field(page, "train-dataset")).to_have_value("shapes")
    expect(page.locator("#train-captions")).to_contain_text("shape_01.png")  # the restored dataset loads
    page.locator("#train-advanced").get_by_text("Advanced options").click()
    expect(field(page, "adv-steps")).to_have_value("7")
    expect(field(page, "adv-resolution")).to_have_value("64")
    expect(field(page, "adv-sample-prompts")).to_have_value("a\nb")


def _running_step(db: Database, job_id: int, at_least: int) -> int:
    return wait_for(
        lambda: db.job(job_id).status == "running" and db.job(job_id).step >= at_least and db.job(job_id).step,
        SLOW / 1000, f"job #{job_id} at step {at_least}",
    )  # fmt: skip


def test_queue_save_now_kill_and_resume_from_that_step(app, page, db):
    fill(page, {"adv-steps": 100000, "adv-batch-size": 1, "adv-sample-every": 0, "adv-checkpoint-every": 0,
                "train-name": "long"})  # fmt: skip
    page.locator("#train-start").click()
    expect(message(page)).to_contain_text("Job #1 is running.", timeout=SLOW)
    fill(page, {"adv-steps": 2, "train-name": "short"})
    page.locator("#train-start").click()
    expect(message(page)).to_contain_text("Queued job #2. It is next in the queue.", timeout=SLOW)
    expect(page.locator("#train-jobs")).to_contain_text("next in the queue", timeout=SLOW)
    expect(page.locator("#train-progress")).to_contain_text("next in the queue", timeout=SLOW)
    page.locator("#train-stop").click()  # job #2 is the one shown: cancelled before it started
    expect(message(page)).to_contain_text("Job #2 stopped: cancelled before it started.", timeout=SLOW)
    # The panel moves on to the running job; pick #2 only once it has, or a tick in flight undoes the pick.
    expect(field(page, "train-job")).to_have_value(re.compile(r"^#1 long"), timeout=SLOW)
    choose(page, "train-job", "#2 short")
    expect(page.locator("#train-progress")).to_contain_text("cancelled", timeout=SLOW)
    page.wait_for_timeout(1500)  # a timer tick with the pick: the panel stays on #2
    expect(field(page, "train-job")).to_have_value(re.compile(r"^#2 short"))
    page.locator("#train-resume").click()
    expect(message(page)).to_contain_text(
        "Job #2 has no checkpoint yet: queued to start over from step 0. It is next in the queue.",
        timeout=SLOW,
    )

    choose(page, "train-job", "#1 long")
    _running_step(db, 1, 2)
    page.locator("#train-save-now").click()
    expect(message(page)).to_contain_text("Checkpoint saved at step", timeout=SLOW)
    saved = int(re.search(r"saved at step (\d+)", message(page).inner_text()).group(1))
    run = app.workspace / "jobs" / "1" / "run"
    assert (run / "checkpoints" / f"step-{saved:06d}" / "state.json").is_file()
    assert (run / "checkpoints" / f"step-{saved:06d}" / f"long-step{saved:06d}.safetensors").is_file()
    assert db.job(1).status == "running"  # training goes on

    plot = page.locator("#train-loss")  # vega describes its axes: numbers, never categories
    legend = plot.locator("[aria-roledescription=legend]").first
    expect(legend).to_have_attribute(
        "aria-label", re.compile(r"loss \(raw\).*loss \(smoothed, EMA 0\.9\)"), timeout=SLOW
    )
    axes = [a.get_attribute("aria-label") for a in plot.locator("[aria-roledescription=axis]").all()]
    assert any(a.startswith("X-axis titled 'step' for a linear scale") for a in axes), axes
    assert any(a.startswith("Y-axis titled 'loss' for a linear scale") for a in axes), axes
    lr_axes = [
        a.get_attribute("aria-label") for a in page.locator("#train-lr [aria-roledescription=axis]").all()
    ]
    assert any("titled 'lr' for a linear scale" in a for a in lr_axes), lr_axes

    os.kill(db.job(1).pid, signal.SIGKILL)  # a crash: everything after the saved step is lost
    wait_for(lambda: db.job(1).status == "interrupted", 60, "the killed job to be interrupted")
    wait_for(lambda: db.job(2).status == "finished", SLOW / 1000, "job #2 to start over and finish")
    assert "has no checkpoint: starting over from step 0" in (app.workspace / "jobs/2/log.txt").read_text()
    choose(page, "train-job", "#1 long")
    page.locator("#train-resume").click()
    expect(message(page)).to_contain_text("Job #1 queued to resume from its last checkpoint.")
    wait_for(lambda: f"resuming job #1 from step-{saved:06d}" in (app.workspace / "jobs/1/log.txt").read_text(),
             SLOW / 1000, "the resume")  # fmt: skip
    _running_step(db, 1, saved + 1)
    page.locator("#train-stop").click()
    expect(message(page)).to_contain_text(
        "Job #1 stopped: stopped by the user; checkpoint saved at step", timeout=SLOW
    )
    expect(page.locator("#tab-train [data-testid='status-tracker'] .error")).to_have_count(0)


def test_train_again_fills_the_form_with_the_jobs_settings(app, page):
    fill(page, {"adv-steps": 55, "train-name": "other", "train-trigger": "x"})
    choose(page, "train-job", "#2 short")
    page.locator("#train-again").click()
    expect(message(page)).to_contain_text("Loaded the settings of job #2")
    expect(field(page, "adv-steps")).to_have_value("2")
    expect(field(page, "train-name")).to_have_value("short")
    expect(field(page, "train-trigger")).to_have_value("inkstyle")
    expect(field(page, "adv-sample-prompts")).to_have_value("a\nb")


def test_a_preset_for_another_base_switches_it_or_warns_with_the_time(app, page):
    choose(page, "train-preset", "Style (SD 1.5)")
    expect(field(page, "train-base")).to_have_value(re.compile("models/sd15"))  # a 512 px SD 1.x base is here
    expect(page.locator("#train-fit")).to_have_text("")
    choose(page, "train-preset", "Quick demo (embedded model)")
    expect(field(page, "train-base")).to_have_value(re.compile("Embedded default"))
    choose(page, "train-preset", "Style (SDXL)")  # no SDXL base here: a warning with the time it takes
    fit = page.locator("#train-fit")
    expect(fit).to_contain_text("Style (SDXL) is for SDXL models at 1024 px", timeout=30_000)
    expect(fit).to_contain_text("SD 1.x model made for 128 px")
    expect(fit).to_contain_text(re.compile(r"takes about \d+:\d\d(:\d\d)? here \(from job #\d's speed\)"))
    expect(field(page, "train-base")).to_have_value(re.compile("Embedded default"))
