"""The app's services without the UI: library, mixer, recipes, jobs, progress (real SQLite, real tiny model)."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from test_app_support import random_adapter

from studio.app import library
from studio.app.db import Database
from studio.app.jobs import JobManager
from studio.app.mixing import MixService, Slot
from studio.app.progress import JobView, read_losses
from studio.app.workspace import Workspace
from studio.errors import StudioError
from studio.recipes import GenerationSettings, read_recipe

FAST = GenerationSettings(prompt="a circle", seed=3, steps=1, width=32, height=32)


@pytest.fixture()
def ws(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


@pytest.fixture()
def db(ws) -> Database:
    return Database(ws.db_path)


@pytest.fixture()
def two_adapters(ws, db, tmp_path):
    for seed, name in ((1, "ink"), (2, "neon")):
        library.import_file(ws, db, random_adapter(tmp_path / f"{name}.safetensors", seed))
    return ws, db


def test_import_refuses_pickles_and_non_adapters_and_writes_nothing(ws, db, tmp_path):
    pickle = tmp_path / "evil.ckpt"
    pickle.write_bytes(b"\x80\x04cos\nsystem\n")
    with pytest.raises(StudioError, match="refusing to open a pickle"):
        library.import_file(ws, db, pickle)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(StudioError, match="junk.safetensors"):
        library.import_file(ws, db, junk)
    assert list(ws.adapters.iterdir()) == [] and db.adapters() == []


def test_rename_and_delete_move_every_file(two_adapters):
    ws, db = two_adapters
    (ws.adapters / "ink.json").write_text("{}")  # an A1111 sidecar travels with its adapter
    with pytest.raises(StudioError, match="already in the library"):
        library.rename(ws, db, "ink", "neon")
    row = library.rename(ws, db, "ink", "brush strokes")
    assert row.name == "brush_strokes" and (ws.root / row.path).is_file()
    assert (ws.adapters / "brush_strokes.json").is_file() and not (ws.adapters / "ink.json").exists()
    library.delete(ws, db, "brush_strokes")
    assert sorted(p.name for p in ws.adapters.iterdir()) == ["neon.safetensors"]
    assert [r.name for r in db.adapters()] == ["neon"]


def test_mixer_grid_bake_and_recipes(two_adapters, tmp_path):
    ws, db = two_adapters
    mix = MixService(ws, db)
    slots = [Slot("ink", weight=0.8), Slot("neon", weight=-0.5, text_encoder=0.0)]
    (image,) = mix.generate("default", slots, FAST)
    assert ws.contains(image) and Image.open(image).size == (32, 32)

    grid = Image.open(mix.grid("default", slots, FAST, "adapters", "a circle\na square"))
    assert grid.width > 2 * 32 and grid.height > 3 * 32  # base + 2 adapters x 2 prompts, with labels
    with pytest.raises(StudioError, match="numbers separated by commas"):
        mix.grid("default", slots, FAST, "weights", "0, one")

    baked, report = mix.bake("default", slots, "blend", rank=2)
    assert (
        report.method == "svd" and db.adapter("blend").source == "baked" and db.adapter("blend").rank == "2"
    )
    with pytest.raises(StudioError, match="already in the library"):
        mix.bake("default", slots, "blend", rank=None)
    with pytest.raises(StudioError, match="chosen in two slots"):
        mix.generate("default", [Slot("ink"), Slot("ink")], FAST)

    saved = mix.save_recipe("default", slots, FAST, "../../evil name")
    assert saved.parent == ws.recipes and saved.name == "evil_name.json"
    library.rename(ws, db, "ink", "ink2")  # recipes find adapters by content, then by name
    recipe, restored = mix.load_recipe(saved)
    assert restored == [Slot("ink2", True, 0.8, 1.0, 1.0), Slot("neon", True, -0.5, 1.0, 0.0)]
    assert recipe.settings == FAST
    library.delete(ws, db, "neon")
    with pytest.raises(StudioError, match="not in the library: neon"):
        mix.load_recipe(saved)
    outside = tmp_path / "elsewhere.json"
    outside.write_text(saved.read_text())
    with pytest.raises(StudioError, match="outside the workspace"):
        mix.load_recipe(outside)


def test_jobs_left_running_by_a_dead_app_become_interrupted(ws, db):
    job = db.add_job("ink", {"data": "x"})
    db.update_job(job, status="running", pid=2**22 + 12345)  # no such process
    manager = JobManager(ws, db, poll_seconds=60)
    try:
        found = db.job(job)
        assert (found.status, found.error) == ("interrupted", "the app stopped while the job was running")
        with pytest.raises(StudioError, match="is interrupted, not running"):
            manager.stop(job)
        db.update_job(job, status="finished")
        with pytest.raises(StudioError, match="only stopped, interrupted or failed jobs resume"):
            manager.resume(job)
    finally:
        manager.close()


def test_progress_reads_partial_metrics_and_formats_eta(ws, db, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 2, 3)]  # a resume rewrote 2 and 3
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')  # killed mid-line
    assert read_losses(run) == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    job = db.job(db.add_job("ink", {"data": "x", "run_dir": str(run)}))
    job.status, job.step, job.total, job.loss = "running", 25, 100, 0.1234
    text = JobView(job, 25.0, 3725.0).status_text()
    assert text == f"job #{job.id} ink: running · 25% · step 25/100 · epoch 1 · loss 0.1234 · ETA 1:02:05"
    assert 'data-percent="25"' in JobView(job, 25.0, None).html()


def test_workspace_database_is_reopened_not_reset(ws, db):
    db.add_adapter(name="a", path="adapters/a.safetensors", source="imported")
    assert [r.name for r in Database(ws.db_path).adapters()] == ["a"]


def test_block_weights_travel_through_generation_recipes_and_back(two_adapters):
    ws, db = two_adapters
    mix = MixService(ws, db)
    blocks = {"down": 0.5, "mid": 0.0, "up.1": 1.5}
    slots = [Slot("ink", weight=0.8, blocks=blocks), Slot("neon")]
    (image,) = mix.generate("default", slots, FAST)
    assert read_recipe(image).adapters[0].weights.blocks == blocks  # the PNG carries them
    recipe, restored = mix.load_recipe(image)
    assert restored == slots and restored[0].blocks == blocks
    saved = mix.save_recipe("default", restored, FAST, "blocks")
    assert json.loads(saved.read_text())["adapters"][0]["blocks"] == blocks
