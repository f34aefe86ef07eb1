"""Scanning a kohya-style folder: repeats, fallback captions, bad files, symlinks, empty sets."""

from __future__ import annotations

import json
import os

import pytest
from data.make_bad_dataset import make_bad_files, save_image
from PIL import Image

from studio.data import (
    Bucket,
    DatasetConfig,
    bucket_info,
    dataset_dirs,
    expand_samples,
    scan_dataset,
    tag_frequency,
)
from studio.errors import DatasetError, StudioError


@pytest.fixture
def kohya_root(tmp_path):
    root = tmp_path / "data"
    save_image(root / "loose.png", (64, 64))
    (root / "loose.txt").write_text("a loose picture, Red")
    save_image(root / "UPPER.JPG", (96, 64))
    (root / "UPPER.txt").write_text("shouting, red")
    save_image(root / "10_mystyle style" / "a.png", (64, 128))
    save_image(root / "10_mystyle style" / "deeper" / "b.webp", (64, 64))
    save_image(root / "0_disabled" / "c.png")
    save_image(root / "misc" / "d.bmp", (64, 64))
    save_image(root / ".cache" / "e.png")  # hidden: ignored
    (root / "misc" / "readme.md").write_text("not an image")
    return root


def test_kohya_layout_repeats_classes_and_warnings(kohya_root):
    dataset = scan_dataset(DatasetConfig(kohya_root, trigger="sks"))
    by_name = {item.path.name: item for item in dataset.items}

    assert sorted(by_name) == ["UPPER.JPG", "a.png", "b.webp", "d.bmp", "loose.png"]
    assert by_name["loose.png"].caption == "sks, a loose picture, Red"
    assert (by_name["loose.png"].repeats, by_name["loose.png"].folder) == (1, "data")
    for name in ("a.png", "b.webp"):  # nested folders inherit repeats and class caption
        item = by_name[name]
        assert (item.repeats, item.folder, item.caption, item.caption_source) == (
            10,
            "10_mystyle style",
            "sks, mystyle style",
            "",
        )
    assert (by_name["d.bmp"].repeats, by_name["d.bmp"].caption) == (1, "sks")  # folder name not used
    assert (by_name["a.png"].width, by_name["a.png"].height) == (64, 128)
    assert by_name["a.png"].bucket == Bucket(320, 704)  # nearest to 1:2

    assert [(p.path.name, "repeat count 0" in p.reason) for p in dataset.problems] == [("0_disabled", True)]
    assert [(n.path.name, "no N_ repeat prefix" in n.reason) for n in dataset.notes] == [("misc", True)]
    skipped, missing = dataset.warnings  # one line for skipped files, one for missing captions
    assert skipped.startswith("skipped 1 ") and "0_disabled (repeat count 0" in skipped
    for name in ("10_mystyle style/a.png", "10_mystyle style/deeper/b.webp", "misc/d.bmp"):
        assert name in missing
    assert "loose.png" not in missing
    assert len(expand_samples(dataset.items)) == 1 + 1 + 10 + 10 + 1


def test_class_name_already_holding_the_trigger_is_not_doubled(kohya_root):
    dataset = scan_dataset(DatasetConfig(kohya_root, trigger="MyStyle"))
    assert {i.caption for i in dataset.items if i.repeats == 10} == {"mystyle style"}


def test_kohya_metadata_summaries(kohya_root):
    items = scan_dataset(DatasetConfig(kohya_root, trigger="sks")).items
    frequency = tag_frequency(items)
    assert frequency["data"] == {"sks": 2, "a loose picture": 1, "red": 2, "shouting": 1}
    assert frequency["10_mystyle style"] == {"sks": 2, "mystyle style": 2}
    assert dataset_dirs(items)["10_mystyle style"] == {"n_repeats": 10, "img_count": 2}
    info = bucket_info(items)
    assert sum(b["count"] for b in info["buckets"].values()) == len(expand_samples(items))
    assert json.dumps(info) and info["mean_img_ar_error"] >= 0


def test_bad_files_are_skipped_with_reasons(tmp_path):
    expected = make_bad_files(tmp_path / "bad")
    save_image(tmp_path / "bad" / "good.png")
    dataset = scan_dataset(DatasetConfig(tmp_path / "bad"))
    assert [item.path.name for item in dataset.items] == ["good.png"]
    reasons = {problem.path.name: problem.reason for problem in dataset.problems}
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert fragment in reasons[name], (name, reasons[name])
    assert dataset.images_found == len(expected) + 1


def test_animated_files_are_kept_with_a_note(tmp_path):
    first, second = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    first.save(tmp_path / "anim.gif", save_all=True, append_images=[second])
    dataset = scan_dataset(DatasetConfig(tmp_path))
    assert [item.path.name for item in dataset.items] == ["anim.gif"]
    assert "animated (2 frames): using the first frame" in dataset.notes[0].reason


def test_symlinks_outside_the_root_are_refused_and_loops_end(tmp_path):
    root = tmp_path / "root"
    outside = save_image(tmp_path / "elsewhere" / "secret.png")
    save_image(root / "inside.png")
    os.symlink(outside, root / "escape.png")
    os.symlink(tmp_path / "elsewhere", root / "10_linked")
    os.symlink(root / "inside.png", root / "alias.png")
    (root / "sub").mkdir()
    os.symlink(root, root / "sub" / "loop")

    dataset = scan_dataset(DatasetConfig(root))

    assert sorted(item.path.name for item in dataset.items) == ["alias.png", "inside.png"]
    reasons = {problem.path.name: problem.reason for problem in dataset.problems}
    assert "outside the dataset folder" in reasons["escape.png"]
    assert "outside the dataset folder" in reasons["10_linked"]
    assert "already scanned" in reasons["loop"]


def test_zero_usable_images_is_a_dataset_error_naming_the_folder(tmp_path):
    make_bad_files(tmp_path / "bad")
    with pytest.raises(DatasetError) as caught:
        scan_dataset(DatasetConfig(tmp_path / "bad"))
    assert str(tmp_path / "bad") in str(caught.value)
    assert "were skipped" in str(caught.value)

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no usable images"):
        scan_dataset(DatasetConfig(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="not found"):
        scan_dataset(DatasetConfig(tmp_path / "missing"))
    assert scan_dataset(DatasetConfig(tmp_path / "empty"), allow_empty=True).items == []


@pytest.mark.parametrize("bad", [{"caption_dropout": 1.5}, {"keep_tokens": -1}, {"bucket_step": 12}])
def test_bad_settings_are_user_errors(tmp_path, bad):
    with pytest.raises(StudioError):
        DatasetConfig(tmp_path, **bad).buckets()
