"""The embedded default captioner: measured on fresh toyworld renders, and the offline flow it enables.

Accuracy is read back from the caption *text* with the grammar (trainers/captioner/evaluate.py)
on renders of a seed the captioner never trained on (it trained on seed 7).
"""

from __future__ import annotations

import json

from PIL import Image

from studio.captioning.default import DefaultCaptioner, default_captioner_dir
from studio.cli import main
from studio.formats.safetensors_io import read_header
from trainers.captioner.evaluate import accuracy, measure, parse
from trainers.toyworld import render_scene, scene_at


def test_object_colour_shape_position_and_background_words_are_right_90_percent():
    captioner = DefaultCaptioner()
    scores = measure(captioner.caption, count=100, seed=4242)
    for slot in ("colour", "shape", "position", "background"):
        assert scores[slot] >= 0.9, scores


def test_the_measurement_reads_captions_and_can_fail():
    scenes = [scene_at(4242, i) for i in range(20)]
    perfect = accuracy(scenes, [s.caption for s in scenes])
    assert perfect == dict.fromkeys(("colour", "shape", "size", "position", "background"), 1.0)
    shifted = accuracy(scenes, [s.caption for s in scenes[1:] + scenes[:1]])
    assert max(shifted.values()) < 0.5
    assert parse("a small red star at the top, on a blue to green gradient background") == (
        {"top": ("small", "red", "star")},
        ("blue", "green"),
    )


def test_the_shipped_captioner_is_small_and_documented():
    folder = default_captioner_dir()
    assert sum(p.stat().st_size for p in folder.iterdir()) < 3_000_000
    assert "python -m trainers.captioner.train" in (folder / "TRAINING.md").read_text()
    assert json.loads((folder / "config.json").read_text())["shapes"]


def test_uncaptioned_renders_are_captioned_then_trained_on_offline(tmp_path, capsys):
    data = tmp_path / "data" / "5_toy"
    data.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(render_scene(scene_at(99, i))).save(data / f"{i}.png")
    assert main(["caption", str(tmp_path / "data"), "--prefix", "toystyle"]) == 0
    assert all(p.with_suffix(".txt").read_text().startswith("toystyle, a ") for p in data.glob("*.png"))
    out = tmp_path / "toy.safetensors"
    argv = ["train", str(tmp_path / "data"), "--output", str(out), "--resolution", "64", "--steps", "2"]
    assert main([*argv, "--batch-size", "2", "--rank", "4"]) == 0
    assert "have no caption" not in capsys.readouterr().out
    frequency = json.loads(read_header(out).metadata["ss_tag_frequency"])
    assert frequency["5_toy"]["toystyle"] == 4
