"""``studio caption DIR`` with the embedded default captioner: sidecars, only-missing, overwrite, bad input."""

from __future__ import annotations

import pytest
from PIL import Image

import studio.cli
from studio.captioning import CaptionerOptions, load_captioner
from trainers.toyworld import render_scene, scene_at


@pytest.fixture
def renders(tmp_path):
    folder = tmp_path / "set"
    (folder / "sub").mkdir(parents=True)
    paths = []
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        paths.append(folder / name)
        Image.fromarray(render_scene(scene_at(77, i))).save(paths[-1], quality=95)
    return folder, paths


def _expected(paths, style="sentence"):
    captioner = load_captioner("default", CaptionerOptions(style=style))
    return captioner.caption([Image.open(p).convert("RGB") for p in paths])


def test_captions_every_uncaptioned_image_with_the_prefix(renders, capsys):
    folder, paths = renders
    assert studio.cli.main(["caption", str(folder), "--prefix", "toystyle", "--batch-size", "2"]) == 0
    written = [p.with_suffix(".txt").read_text() for p in paths]
    assert written == [f"toystyle, {text}\n" for text in _expected(paths)]
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("captioned 3 image(s) with default, kept 0 existing caption(s), 0 failed")
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]  # atomic writes leave nothing


def test_only_missing_keeps_existing_captions_and_overwrite_replaces_them(renders, capsys):
    folder, (a, b, c) = renders
    a.with_suffix(".txt").write_text("my own words")
    b.with_suffix(".caption").write_text("kohya style caption")
    before = a.with_suffix(".txt").stat().st_mtime_ns
    assert studio.cli.main(["caption", str(folder)]) == 0
    assert a.with_suffix(".txt").read_text() == "my own words"
    assert a.with_suffix(".txt").stat().st_mtime_ns == before
    assert not b.with_suffix(".txt").exists()  # its .caption is a caption too
    assert c.with_suffix(".txt").read_text() == _expected([c])[0] + "\n"
    assert "captioned 1 image(s) with default, kept 2 existing caption(s)" in capsys.readouterr().out

    assert studio.cli.main(["caption", str(folder), "--overwrite", "--style", "tags"]) == 0
    assert [p.with_suffix(".txt").read_text() for p in (a, b, c)] == [
        t + "\n" for t in _expected([a, b, c], "tags")
    ]
    assert b.with_suffix(".caption").read_text() == "kohya style caption"


def test_an_unreadable_image_is_skipped_with_its_reason(renders, capsys):
    folder, paths = renders
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "empty.jpg").write_bytes(b"")
    assert studio.cli.main(["caption", str(folder)]) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("studio: skipped")]
    assert len(skipped) == 2
    assert any("broken.png" in line and "not" in line for line in skipped)
    assert any("empty.jpg" in line and "empty file (0 bytes)" in line for line in skipped)
    assert not (folder / "broken.txt").exists() and not (folder / "empty.txt").exists()
    assert all(p.with_suffix(".txt").is_file() for p in paths)
    assert "captioned 3 image(s)" in captured.out and "2 failed" in captured.out
    assert "Traceback" not in captured.err


def test_a_hub_captioner_not_cached_offline_is_one_line_and_exit_2(renders, capsys, monkeypatch):
    folder, paths = renders
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert studio.cli.main(["caption", str(folder), "--captioner", "studio-test/no-such-captioner"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "'studio-test/no-such-captioner'" in err[0] and "offline (HF_HUB_OFFLINE=1)" in err[0]
    assert "--captioner /path/to/its/folder" in err[0]
    assert not any(p.with_suffix(".txt").exists() for p in paths)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--captioner", "./no/such/folder"], "no such captioner folder"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--style", "sentence", "--captioner", "{tagger}"], "not a captioner folder"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(renders, tmp_path, capsys, args, message):
    folder, paths = renders
    (tmp_path / "notamodel").mkdir()
    args = [a.replace("{tagger}", str(tmp_path / "notamodel")) for a in args]
    assert studio.cli.main(["caption", str(folder), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_folder_without_images_is_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert studio.cli.main(["caption", str(tmp_path / "empty")]) == 2
    assert "no images to caption" in capsys.readouterr().err
    assert studio.cli.main(["caption", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
