"""Dataset check additions: images below the training size, perceptual near-duplicates, and
captions that never mention the trigger."""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image, ImageDraw

from studio.cli import main
from studio.data import DatasetConfig
from studio.data.report import check_dataset
from studio.data.similar import dhash


def _picture(kind: str, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), (230, 230, 230))
    draw = ImageDraw.Draw(image)
    s = size
    if kind == "circle":  # a dark disc on the left over a ramp darkening to the right
        for x in range(s):
            draw.line([(x, 0), (x, s)], fill=(255 - x * 255 // s,) * 3)
        draw.ellipse([s * 0.05, s * 0.3, s * 0.45, s * 0.7], fill=(10, 10, 10))
    elif kind == "stripes":  # vertical bars of uneven widths
        for x0, x1 in ((0.1, 0.2), (0.35, 0.4), (0.55, 0.75), (0.9, 0.95)):
            draw.rectangle([s * x0, 0, s * x1, s], fill=(20, 40, 160))
    else:  # a checkerboard of big squares
        for i in range(4):
            for j in range(4):
                if (i + j) % 2:
                    draw.rectangle([i * s // 4, j * s // 4, (i + 1) * s // 4, (j + 1) * s // 4], fill=0)
    return image


def _dataset(root: Path) -> Path:
    root.mkdir()
    _picture("circle", 128).save(root / "cat.png")
    _picture("circle", 128).resize((100, 100)).save(root / "cat-small-copy.jpg", quality=80)
    _picture("stripes", 128).save(root / "bands.png")
    shutil.copy(root / "bands.png", root / "bands-copy.png")
    _picture("checks", 32).save(root / "tiny.png")
    captions = {
        "cat": "inkstyle, a cat",
        "cat-small-copy": "a cat",
        "bands": "InkStyle bands",
        "bands-copy": "bands",
        "tiny": "checks",
    }
    for stem, text in captions.items():
        (root / f"{stem}.txt").write_text(text)
    return root


def test_resized_and_reencoded_copies_hash_close_different_pictures_far(tmp_path):
    root = _dataset(tmp_path / "data")
    cat, copy, bands, checks = (
        dhash(root / name) for name in ("cat.png", "cat-small-copy.jpg", "bands.png", "tiny.png")
    )
    assert (cat ^ copy).bit_count() <= 6
    assert min((cat ^ bands).bit_count(), (cat ^ checks).bit_count(), (bands ^ checks).bit_count()) > 16


def test_the_report_lists_upscaled_near_duplicates_and_captions_without_the_trigger(tmp_path):
    root = _dataset(tmp_path / "data")
    report = check_dataset(DatasetConfig(root=str(root), trigger="inkstyle", resolution=64))
    names = lambda paths: sorted(p.name for p in paths)  # noqa: E731
    assert [names(group) for group in report.duplicates] == [["bands-copy.png", "bands.png"]]
    # The identical copy is not reported again as "near"; the resized JPEG is.
    assert [names(group) for group in report.near_duplicates] == [["cat-small-copy.jpg", "cat.png"]]
    assert [(p.name, w, h) for p, w, h, _ in report.upscaled] == [("tiny.png", 32, 32)]
    assert names(report.without_trigger) == ["bands-copy.png", "cat-small-copy.jpg", "tiny.png"]

    at_32 = check_dataset(DatasetConfig(root=str(root), trigger="inkstyle", resolution=32, bucket_step=32))
    assert at_32.upscaled == []  # at its own size nothing is upscaled
    assert check_dataset(DatasetConfig(root=str(root), resolution=64)).without_trigger == []  # no trigger


def test_the_cli_prints_the_new_sections(tmp_path, capsys):
    root = _dataset(tmp_path / "data")
    assert main(["dataset", "check", str(root), "--trigger", "inkstyle", "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    assert "Near-duplicates (perceptual hash): 1" in out and "cat-small-copy.jpg ~ cat.png" in out
    assert "Below the training resolution: 1" in out and "tiny.png" in out and "32x32 -> 64x64" in out
    assert 'Captions without the trigger "inkstyle": 3 of 5' in out
