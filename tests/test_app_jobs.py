"""Jobs you can trust, without the browser: device slots and the queue, "save a checkpoint now",
the loss and learning-rate curves, presets against the base, "train again" (real SQLite, real
processes, the real tiny trainer)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from studio.app.context import AppContext
from studio.app.db import Database
from studio.app.fit import base_shape, better_base, estimate_seconds, fit_warning
from studio.app.jobs import JobManager, device_slots, schedule
from studio.app.progress import RAW, SMOOTHED, VALIDATION, job_view, loss_curves, smoothed
from studio.app.training import jobs_table, queue_positions, submit_job
from studio.app.ui.train_tab import _plot_frames, again_values, config_values
from studio.app.uploads import UploadLimits
from studio.app.workspace import Workspace
from studio.config import TrainConfig
from studio.errors import StudioError
from studio.models.default import default_model_dir
from studio.presets import PRESETS
from studio.samples import make_demo_dataset
from studio.training.checkpoint import list_checkpoints
from studio.training.recipe import train

# A stand-in worker: marks its job running, notes the devices it was given, waits for a release file.
FAKE_WORKER = """
import os, sys, time
from pathlib import Path
from studio.app.db import Database
db, job_id, folder = Database(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
db.update_job(job_id, status="running")
(folder / f"{job_id}.tmp").write_text(os.environ["CUDA_VISIBLE_DEVICES"])
(folder / f"{job_id}.tmp").rename(folder / f"{job_id}.env")  # whole, never half-written
while not (folder / f"{job_id}.go").exists():
    time.sleep(0.05)
db.update_job(job_id, status="finished", finished=time.time())
"""


class FakeSlots(JobManager):
    """The real manager and queue; each job's process is the stand-in above."""

    def command(self, job, slots):
        folder = self.ws.root / "fake"
        folder.mkdir(exist_ok=True)
        return [sys.executable, "-c", FAKE_WORKER, str(self.db.path), str(job.id), str(folder)]


@pytest.fixture()
def ws(tmp_path) -> Workspace:
    ws = Workspace.open(tmp_path / "ws")
    make_demo_dataset(ws.datasets / "shapes", count=2)
    return ws


@pytest.fixture()
def db(ws) -> Database:
    return Database(ws.db_path)


def _wait(check, what: str, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_scheduler_fills_free_slots_first_come_first_served(db):
    ids = [db.add_job(f"j{n}", {}, gpus=gpus) for n, gpus in enumerate((1, 2, 1))]
    queued = db.queued()
    assert [job.id for job in queued] == ids
    assert [(j.id, s) for j, s in schedule(queued, ["0", "1", "2"])] == [
        (ids[0], ["0"]),
        (ids[1], ["1", "2"]),
    ]
    # The two-GPU job waits for two free slots, and the job behind it waits too (no starving it).
    assert [(j.id, s) for j, s in schedule(queued, ["1"])] == [(ids[0], ["1"])]
    assert schedule(queued[1:], ["1"]) == []
    assert [(j.id, s) for j, s in schedule(queued[1:], ["0", "1"])] == [(ids[1], ["0", "1"])]


def test_device_slots_follow_the_gpus_asked_for():
    assert device_slots() == ["cpu"]  # this machine has no CUDA
    assert device_slots(2) == ["cpu0", "cpu1"]
    with pytest.raises(StudioError, match="--gpus must be at least 1"):
        device_slots(0)


def test_jobs_run_concurrently_one_per_slot_and_a_two_gpu_job_waits(ws, db):
    manager = FakeSlots(ws, db, poll_seconds=0.05, slots=["0", "1"])
    fake = ws.root / "fake"
    try:
        config = TrainConfig(data=str(ws.datasets / "shapes"))
        a, b, c = (manager.submit(name, config) for name in ("a", "b", "c"))
        wide = manager.submit("wide", config, gpus=2)
        with pytest.raises(StudioError, match="asks for 3 GPU"):
            manager.submit("too-wide", config, gpus=3)
        _wait(lambda: db.job(a).status == db.job(b).status == "running", "two jobs running")
        assert {db.job(a).gpu, db.job(b).gpu} == {"0", "1"}
        assert {(fake / f"{j}.env").read_text() for j in (a, b) if (fake / f"{j}.env").exists()} <= {"0", "1"}
        assert db.job(c).status == "queued" and queue_positions(db) == {c: 1, wide: 2}
        table = {row[0]: row for row in jobs_table(db, ws.root)}
        assert table[c][3] == "next in the queue" and table[wide][3] == "2 in the queue"
        assert table[a][4] in ("0", "1")
        freed = db.job(a).gpu
        (fake / f"{a}.go").touch()
        _wait(lambda: db.job(c).status == "running", "the third job on the freed slot")
        assert db.job(c).gpu == freed and db.job(wide).status == "queued"  # one slot free: not enough
        (fake / f"{b}.go").touch()
        time.sleep(0.5)
        assert db.job(wide).status == "queued"  # still one slot
        (fake / f"{c}.go").touch()
        _wait(lambda: db.job(wide).status == "running", "the two-GPU job")
        assert db.job(wide).gpu in ("0,1", "1,0")
        _wait(lambda: (fake / f"{wide}.env").exists(), "the env file")
        assert sorted((fake / f"{wide}.env").read_text().split(",")) == ["0", "1"]
        (fake / f"{wide}.go").touch()
        _wait(lambda: db.job(wide).status == "finished", "the two-GPU job to finish")
        too_wide = db.add_job("from-a-bigger-app", {}, gpus=3)  # queued by an app with more GPUs
        _wait(lambda: db.job(too_wide).status == "failed", "the job no slots here can run")
        assert "asks for 3 GPU(s); this app has 2" in db.job(too_wide).error
    finally:
        manager.close()
    two = JobManager.command(manager, db.job(wide), ["0", "1"])
    assert two[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc-per-node=2" in two
    assert JobManager.command(manager, db.job(a), ["0"])[1:3] == ["-m", "studio.app.worker"]


def test_save_now_writes_the_current_step_and_training_goes_on(tmp_path):
    data = make_demo_dataset(tmp_path / "data", count=2)
    config = TrainConfig(
        data=str(data),
        output=str(tmp_path / "out" / "style.safetensors"),
        resolution=64,
        batch_size=1,
        rank=2,
        lr=1e-3,
        steps=4,
        seed=7,
    )  # fmt: skip  (overlapped steps, the default: the save waits for the next step's bookkeeping)
    result = train(config, lambda e: "save" if e.step == 1 else None)
    assert not result.stopped and result.steps == 4
    # Asked at step 1; step 2 was already running (overlapped), so the save holds step 2, finished.
    assert [p.name for p in list_checkpoints(result.run_dir)] == ["step-000002", "step-000004"]
    saved = list_checkpoints(result.run_dir)[0]
    state = json.loads((saved / "state.json").read_text())
    assert state["step"] == 2 and state["losses"] == pytest.approx(result.losses[:2])  # every loss it holds
    assert (saved / "style-step000002.safetensors").is_file()  # a usable adapter inside
    # (resuming from a checkpoint replays the run exactly: tests/test_train_hooks.py)


def test_loss_curves_are_numeric_smoothed_and_carry_validation_and_lr(ws, db, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    losses = [0.9, 0.1, 0.8, 0.2, 0.7]
    rows = [{"step": s, "loss": v, "lr": 1e-4 * s} for s, v in enumerate(losses, 1)] + [
        {"step": 5, "val_loss": 0.3}
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    reference, average = [], 0.0
    for n, value in enumerate(losses, 1):  # the EMA, debiased, written out the long way
        average = 0.9 * average + 0.1 * value
        reference.append(average / (1 - 0.9**n))
    assert [v for _, v in smoothed(list(enumerate(losses, 1)))] == pytest.approx(reference)
    curves = loss_curves(run)
    assert [v for _, v, s in curves if s == RAW] == losses
    assert [v for _, v, s in curves if s == SMOOTHED] == pytest.approx(reference)
    assert [(st, v) for st, v, s in curves if s == VALIDATION] == [(5, 0.3)]
    job_id = db.add_job("ink", {"data": "x", "run_dir": str(run)})
    view = job_view(db, job_id, run / "log.txt")
    assert view.lrs == [(s, pytest.approx(1e-4 * s)) for s in range(1, 6)]
    frame, lrs = _plot_frames(view)
    assert (str(frame["step"].dtype), str(frame["value"].dtype), str(lrs["lr"].dtype)) == (
        "int64",
        "float64",
        "float64",
    )
    empty = job_view(db, db.add_job("failed", {"data": "x", "run_dir": str(tmp_path / "none")}), run / "x")
    frame, lrs = _plot_frames(empty)  # a job that failed before its first step: still numeric axes
    assert frame.empty and str(frame["step"].dtype) == "int64" and str(lrs["step"].dtype) == "int64"


def _fake_base(folder: Path, sample_size: int, xl: bool = False) -> None:
    """Config files only, laid out as diffusers saves them: what the picker reads to tell a
    base's family (the shared config detection) and its native size."""
    for part in ("unet", "vae"):
        (folder / part).mkdir(parents=True)
    encoders = ("text_encoder", "text_encoder_2") if xl else ("text_encoder",)
    index = {
        "_class_name": "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        **{name: ["transformers", "CLIPTextModel"] for name in encoders},
    }
    unet = {"sample_size": sample_size, "cross_attention_dim": 2048 if xl else 768}
    if xl:
        unet["addition_embed_type"] = "text_time"
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "unet" / "config.json").write_text(json.dumps(unet))
    (folder / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [128, 256, 512, 512]}))


def test_a_preset_switches_to_a_base_that_fits_or_warns_with_the_time(ws, db):
    assert base_shape(ws, "default").resolution == 128 and base_shape(ws, "default").family == "sd1"
    sd15, quick = PRESETS["Style (SD 1.5)"], PRESETS["Quick demo (embedded model)"]
    assert better_base(ws, sd15, "default") is None  # nothing fits: stay, and warn
    config = sd15.apply(data="x", base="default")
    assert "no job on this machine" in fit_warning(ws, db, sd15, "default", config)
    timed = db.add_job("quick", quick.apply(data="x", base="default", resolution=128, batch_size=4).to_dict())
    now = time.time()
    db.update_job(timed, status="finished", segment_step=1, segment_time=now - 90, step=10, finished=now)
    seconds, source = estimate_seconds(db, config)  # 10 s a step at 128 px batch 4 -> 512 px: 16x
    assert source == timed and seconds == pytest.approx(10 * 16 * 1500)
    warning = fit_warning(ws, db, sd15, "default", config)
    assert "Style (SD 1.5)" in warning and "128 px" in warning and "66:40:00" in warning
    assert fit_warning(ws, db, quick, "default", quick.apply(data="x")) == ""  # it fits
    _fake_base(ws.models / "sd15", 64)
    _fake_base(ws.models / "xl", 128, xl=True)
    assert better_base(ws, sd15, "default") == "models/sd15"
    assert better_base(ws, PRESETS["Style (SDXL)"], "models/sd15") == "models/xl"
    assert better_base(ws, quick, "models/xl") == "default"
    assert better_base(ws, sd15, "models/sd15") is None  # it fits already


def test_train_again_gives_the_form_the_jobs_settings(ws, db):
    manager = FakeSlots(ws, db, poll_seconds=60, slots=["cpu"])  # nothing picks the jobs up in this test
    manager._closed.set()
    ctx = AppContext(ws, db, manager, None, UploadLimits())
    options = {"steps": 7, "resolution": 64, "rank": 4, "sample_prompts": ["a", "b"]}
    first = submit_job(
        ctx, "shapes", "ink", "Quick demo (embedded model)", "default", "", "inkstyle", options
    )
    values = again_values(ctx, first)
    assert {k: values[k] for k in ("dataset", "name", "base", "hub_id", "trigger", "gpus")} == {
        "dataset": "shapes",
        "name": "ink",
        "base": "default",
        "hub_id": "",
        "trigger": "inkstyle",
        "gpus": 1,
    }
    from studio.app.ui.train_tab import config_from_widgets

    again = submit_job(ctx, values["dataset"], values["name"], "Style (SDXL)", values["base"], values["hub_id"],
                       values["trigger"], config_from_widgets(values["advanced"]))  # fmt: skip
    a, b = db.job(first).config_dict, db.job(again).config_dict
    assert {k: v for k, v in a.items() if k not in ("output", "run_dir")} == {
        k: v for k, v in b.items() if k not in ("output", "run_dir")
    }
    assert config_values(TrainConfig.from_dict(a)) == values["advanced"]
    assert default_model_dir().is_dir()


def test_a_single_file_base_trains_with_the_config_chosen_beside_it(ws, db):
    import torch
    from safetensors.torch import save_file

    from studio.app.models import config_choices
    from studio.app.ui.common import config_picker

    manager = FakeSlots(ws, db, poll_seconds=60, slots=["cpu"])  # nothing picks the jobs up in this test
    manager._closed.set()
    ctx = AppContext(ws, db, manager, None, UploadLimits())
    save_file(
        {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(ws.models / "v1.safetensors")
    )
    choices, family = config_choices(ws, "models/v1.safetensors")
    assert family == "sd1" and [value for _, value in choices] == ["", "default"]  # auto, the embedded sd1
    shown = config_picker(ws, "models/v1.safetensors")
    assert shown["visible"] and shown["value"] == ""
    assert not config_picker(ws, "default")["visible"]  # a folder needs no config

    args = (
        ctx,
        "shapes",
        "ink",
        "Quick demo (embedded model)",
        "models/v1.safetensors",
        "",
        "",
        {"steps": 2},
    )
    chosen = db.job(submit_job(*args, base_config="default")).config_dict
    assert chosen["base"] == str(ws.models / "v1.safetensors")
    assert chosen["base_config"] == str(default_model_dir())
    assert db.job(submit_job(*args)).config_dict["base_config"] is None  # auto: diffusers' own config
    plain = db.job(submit_job(ctx, "shapes", "ink", "Quick demo (embedded model)", "default", "", "", {}))
    assert plain.config_dict["base_config"] is None  # a folder base is left alone
