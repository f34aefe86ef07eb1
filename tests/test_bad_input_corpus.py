"""The bad-input corpus: every awkward file gets a per-file reason, training uses the rest.

The corpus (``tests/data/make_bad_dataset.py make_corpus``) holds broken and odd images,
odd caption encodings and lengths, hostile names, a symlink out of the dataset, a folder
of captions only, nested folders and ``N_name`` folders with N = 0 or not a number.
"""

from __future__ import annotations

import pytest
from data.make_bad_dataset import make_corpus, save_image
from safetensors.torch import load_file

from studio.cli import main
from studio.config import TrainConfig
from studio.data import DatasetConfig, scan_dataset
from studio.data.report import check_dataset
from studio.errors import DatasetError
from studio.formats.safetensors_io import read_header
from studio.training.recipe import train

TRIGGER = "badstyle"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "bad"
    return root, make_corpus(root)


def test_every_corpus_entry_is_kept_or_explained(corpus, capsys):
    root, expected = corpus
    config = DatasetConfig(root=root, trigger=TRIGGER, resolution=64)
    dataset = scan_dataset(config)
    kept = {item.path.relative_to(root).as_posix(): item for item in dataset.items}
    said: dict[str, list[str]] = {}
    for entry in dataset.problems + dataset.notes:
        said.setdefault(entry.path.relative_to(root).as_posix(), []).append(entry.reason)
    assert main(["dataset", "check", str(root), "--trigger", TRIGGER, "--resolution", "64"]) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err

    for name, expect in expected.items():
        is_image = name.rsplit(".", 1)[-1].lower() in {"png", "jpg", "jpeg", "webp", "gif", "bmp"}
        if is_image:
            assert (name in kept) == expect.kept, name
        if expect.says:
            text = " ".join(said.get(name, []))
            assert expect.says in text or expect.says in _report_lines(printed.out, name), name
        elif not expect.kept:
            assert said.get(name), f"{name} skipped without a reason"
        if not expect.kept and (is_image or name in said):
            assert name in printed.out, f"{name} missing from the printed report"
    assert not (set(kept) - set(expected)), "the scan kept a file the corpus does not list"


def _report_lines(report: str, name: str) -> str:
    return "\n".join(line for line in report.splitlines() if name in line) + (
        " no caption" if name in report.split("Missing captions")[-1].split("Duplicates")[0] else ""
    )


def test_odd_but_valid_files_are_read_right(corpus):
    root, _ = corpus
    dataset = scan_dataset(DatasetConfig(root=root, trigger=TRIGGER, resolution=64))
    items = {item.path.relative_to(root).as_posix(): item for item in dataset.items}
    assert (items["odd/rotated.jpg"].width, items["odd/rotated.jpg"].height) == (64, 96)  # EXIF applied
    assert items["captions/latin1.png"].caption == f"{TRIGGER}, café crème, still life"
    assert items["captions/bom.png"].caption == f"{TRIGGER}, a bom caption"  # no BOM character left
    assert items["captions/empty.png"].caption == TRIGGER  # empty file = no caption: the trigger stands in
    assert items["captions/trigger_only.png"].caption == TRIGGER  # not doubled
    assert items["x_notanumber/kept.png"].repeats == 1
    report = check_dataset(DatasetConfig(root=root, trigger=TRIGGER, resolution=64))
    assert [path.name for path, _ in report.token_overflow] == ["long.png"]


def test_training_uses_only_the_valid_files(corpus, tmp_path):
    root, expected = corpus
    out = tmp_path / "bad.safetensors"
    config = TrainConfig(data=str(root), output=str(out), trigger=TRIGGER, resolution=64, steps=2, rank=2)
    train(config)
    usable = [
        name for name, e in expected.items() if e.kept and name.endswith((".png", ".jpg", ".gif", ".webp"))
    ]
    metadata = read_header(out).metadata
    assert int(metadata["ss_num_train_images"]) == len(usable)
    assert load_file(str(out))


def test_no_usable_image_refuses_with_a_clear_message(tmp_path, capsys):
    root = tmp_path / "all-bad"
    make_corpus(root)
    for path in sorted(root.rglob("*"), reverse=True):
        keep = path.is_dir() or path.is_symlink() or "broken" in path.parts or path.suffix == ".txt"
        if not keep:
            path.unlink()
    with pytest.raises(DatasetError, match="no usable images"):
        scan_dataset(DatasetConfig(root=root, resolution=64))
    out = tmp_path / "never.safetensors"
    assert main(["train", str(root), "--output", str(out), "--steps", "1", "--resolution", "64"]) == 2
    err = capsys.readouterr().err
    assert "no usable images" in err and str(root) in err and "Traceback" not in err
    assert not out.exists()
    save_image(root / "one_good.png")  # and one good file is enough to go again
    assert len(scan_dataset(DatasetConfig(root=root, resolution=64)).items) == 1
