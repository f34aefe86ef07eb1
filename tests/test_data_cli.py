"""``studio dataset check``: a readable report, exit 0, or exit 2 without a traceback."""

from __future__ import annotations

import shutil

import pytest
from data.make_bad_dataset import make_bad_files, save_image

import studio.cli
from studio.data import DatasetConfig, check_dataset
from studio.models.tokenizer import build_tokenizer, save_tokenizer


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "set"
    save_image(root / "10_ink style" / "a.png", (640, 480))
    save_image(root / "10_ink style" / "b.jpg", (300, 600), (20, 20, 200))
    shutil.copy(root / "10_ink style" / "a.png", root / "10_ink style" / "copy.png")
    (root / "10_ink style" / "a.txt").write_text(
        "a red field, " + ", ".join(f"tag{i} word" for i in range(40))
    )
    (root / "10_ink style" / "b.txt").write_text("a blue sky")
    save_image(root / "loose.webp", (256, 256))
    make_bad_files(root / "junk")
    return root


def test_check_prints_every_section_and_exits_0(dataset, capsys):
    assert studio.cli.main(["dataset", "check", str(dataset), "--trigger", "inkstyle"]) == 0
    out = capsys.readouterr().out
    for heading in (
        "Images",
        "Folders",
        "Sizes (px)",
        "Buckets",
        "Captions",
        "Missing captions",
        "Duplicates",
    ):
        assert heading in out
    assert "found    13" in out and "usable    4" in out and "skipped   9" in out
    assert "samples per epoch: 31" in out
    assert "tokens (approx.)" in out and "approximate" in out
    assert "over 77 tokens (the rest is cut off): 1" in out and "10_ink style/a.png" in out
    assert "10_ink style/a.png = 10_ink style/copy.png" in out
    assert "loose.webp" in out.split("Missing captions")[1].split("Duplicates")[0]
    assert "junk/bomb.png" in out and "decompression bomb" in out and "junk/dot.png" in out
    assert "Traceback" not in out


def test_real_token_counts_with_a_tokenizer(dataset, tmp_path, capsys):
    approx = check_dataset(DatasetConfig(dataset))
    exact = check_dataset(DatasetConfig(dataset), tokenizer=build_tokenizer())
    assert not approx.tokens_exact and exact.tokens_exact
    assert exact.caption_tokens.high > approx.caption_tokens.high  # BPE splits "tag12" further
    assert [path.name for path, _ in exact.token_overflow] == ["a.png"]

    save_tokenizer(build_tokenizer(), tmp_path / "model" / "tokenizer")
    assert studio.cli.main(["dataset", "check", str(dataset), "--tokenizer", str(tmp_path / "model")]) == 0
    out = capsys.readouterr().out
    assert "tokens (approx.)" not in out and "  tokens " in out
    assert studio.cli.main(["dataset", "check", str(dataset), "--tokenizer", str(tmp_path / "nowhere")]) == 2
    assert "cannot load a tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["empty", "bad", "missing", "file"])
def test_unusable_folders_exit_2_with_one_line(kind, tmp_path, capsys):
    target = tmp_path / kind
    if kind == "empty":
        target.mkdir()
    elif kind == "bad":
        make_bad_files(target)
    elif kind == "file":
        target.write_text("not a folder")
    assert studio.cli.main(["dataset", "check", str(target)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert captured.err.startswith("studio: error:") and str(target) in captured.err
    if kind == "bad":
        assert "usable   0" in captured.out and "truncated" in captured.out
