"""The app's captioning service on a real workspace: which captioner a typed value names, and a
dataset captioned in place (only missing captions, the trigger first when asked)."""

from __future__ import annotations

import pytest
from PIL import Image

from studio.app.captions import caption_dataset, captioner_source
from studio.app.workspace import Workspace
from studio.errors import StudioError
from trainers.toyworld import render_scene, scene_at


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def test_a_typed_captioner_is_default_a_workspace_folder_or_a_hub_id(ws, tmp_path):
    (ws.root / "captioners" / "wd14").mkdir(parents=True)
    assert captioner_source(ws, "") == captioner_source(ws, "default") == "default"
    assert captioner_source(ws, "captioners/wd14") == str(ws.root / "captioners" / "wd14")
    assert (
        captioner_source(ws, "Salesforce/blip-image-captioning-base")
        == "Salesforce/blip-image-captioning-base"
    )
    (tmp_path / "outside").mkdir()
    with pytest.raises(StudioError, match="outside the workspace"):
        captioner_source(ws, str(tmp_path / "outside"))
    with pytest.raises(StudioError, match="neither a folder in the workspace nor a hub id"):
        captioner_source(ws, "no such thing")


def test_a_dataset_is_captioned_in_place_keeping_what_it_has(ws):
    folder = ws.datasets / "renders"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(render_scene(scene_at(99, i))).save(folder / f"{i}.png")
    (folder / "1.txt").write_text("mine\n")
    seen = []
    report, line = caption_dataset(
        ws, folder, "default", prefix="inkstyle", on_progress=lambda *a: seen.append(a)
    )
    assert [p.name for p in report.written] == ["0.png", "2.png"] and [p.name for p in report.kept] == [
        "1.png"
    ]
    assert line.startswith("Captioned 2 image(s) with default, kept 1 existing caption(s), 0 failed")
    assert (folder / "1.txt").read_text() == "mine\n"
    assert (folder / "0.txt").read_text().startswith("inkstyle, a ") and seen[-1] == (2, 2)
    report, _ = caption_dataset(ws, folder, "default", overwrite=True)
    assert len(report.written) == 3 and not (folder / "1.txt").read_text().startswith(("mine", "inkstyle"))
