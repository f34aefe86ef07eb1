"""Captions: where they come from, the trigger word, and per-sample shuffle and dropout."""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace

from data.make_bad_dataset import save_image

from studio.data import DatasetConfig, caption_for_sample, scan_dataset, shuffle_tags, with_trigger


def _captions(root, **config):
    dataset = scan_dataset(DatasetConfig(root, **config))
    return {
        item.path.relative_to(root).as_posix(): (item.caption, item.caption_source) for item in dataset.items
    }, dataset


def test_caption_precedence_txt_then_caption_then_metadata(tmp_path):
    for name in ("a", "b", "c", "d", "e"):
        save_image(tmp_path / f"{name}.png")
    save_image(tmp_path / "10_art" / "f.png")
    (tmp_path / "a.txt").write_text("from txt")
    (tmp_path / "a.caption").write_text("from caption")
    (tmp_path / "b.caption").write_text("from caption")
    (tmp_path / "e.txt").write_text("  \n")  # empty: does not hide the .caption
    (tmp_path / "e.caption").write_text("e from caption")
    rows = [{"file_name": n, "text": f"{n} from jsonl"} for n in ("a.png", "b.png", "c.png", "10_art/f.png")]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    (tmp_path / "metadata.csv").write_text(
        'file_name,text\nc.png,c from csv\nd.png,"d from csv, with comma"\n'
    )

    captions, dataset = _captions(tmp_path)

    assert captions["a.png"] == ("from txt", ".txt")
    assert captions["b.png"] == ("from caption", ".caption")
    assert captions["c.png"] == ("c.png from jsonl", "metadata.jsonl")  # jsonl wins over csv
    assert captions["d.png"] == ("d from csv, with comma", "metadata.csv")
    assert captions["e.png"] == ("e from caption", ".caption")
    assert captions["10_art/f.png"] == (
        "10_art/f.png from jsonl",
        "metadata.jsonl",
    )  # root metadata, nested image
    assert any("metadata.jsonl" in n.path.name and "line(s)" in n.reason for n in dataset.notes)


def test_encoding_bom_latin1_and_multiline(tmp_path):
    for name in ("bom", "latin", "lines"):
        save_image(tmp_path / f"{name}.png")
    (tmp_path / "bom.txt").write_bytes("\ufeffcafé au lait".encode())
    (tmp_path / "latin.txt").write_bytes("crème brûlée".encode("latin-1"))
    (tmp_path / "lines.txt").write_text("a cat,\n  sitting\n\non a mat\n")

    captions, dataset = _captions(tmp_path)

    assert captions["bom.png"][0] == "café au lait"
    assert captions["latin.png"][0] == "crème brûlée"
    assert captions["lines.png"][0] == "a cat, sitting on a mat"
    assert [(n.path.name, "Latin-1" in n.reason) for n in dataset.notes] == [("latin.txt", True)]


def test_trigger_is_prepended_once_as_a_whole_word():
    assert with_trigger("a red house", "mystyle") == "mystyle, a red house"
    assert with_trigger("a MyStyle painting", "mystyle") == "a MyStyle painting"
    assert with_trigger("mystyles everywhere", "mystyle") == "mystyle, mystyles everywhere"
    assert with_trigger("", "mystyle") == "mystyle"
    assert with_trigger("a house", None) == "a house"
    assert with_trigger("<sks> style", "<sks>") == "<sks> style"


def test_trigger_applies_to_every_caption_source(tmp_path):
    save_image(tmp_path / "a.png")
    save_image(tmp_path / "b.png")
    (tmp_path / "a.txt").write_text("a red house, Mystyle")
    captions, _ = _captions(tmp_path, trigger="mystyle")
    assert captions["a.png"][0] == "a red house, Mystyle"
    assert captions["b.png"] == ("mystyle", "")  # no caption: the trigger alone


def test_shuffle_keeps_the_first_keep_tokens_tags():
    caption = "mystyle, portrait, red, blue, green, yellow, ink"
    results = {shuffle_tags(caption, 2, random.Random(seed)) for seed in range(30)}
    assert len(results) > 10  # it does shuffle
    for result in results:
        tags = result.split(", ")
        assert tags[:2] == ["mystyle", "portrait"]
        assert sorted(tags) == sorted(caption.split(", "))
    assert shuffle_tags(caption, 2, random.Random(7)) == shuffle_tags(caption, 2, random.Random(7))


def test_caption_dropout_rate_and_determinism(tmp_path):
    save_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("b, c, d, e")
    config = DatasetConfig(tmp_path, trigger="mystyle", caption_dropout=0.3, shuffle_tags=True, keep_tokens=1)
    item = scan_dataset(config).items[0]

    def draws(seed):
        rng = random.Random(seed)
        return [caption_for_sample(item, config, rng) for _ in range(2000)]

    first = draws(123)
    assert first == draws(123)
    assert 0.26 < first.count("") / len(first) < 0.34
    assert all(caption.startswith("mystyle, ") for caption in first if caption)
    plain = replace(config, caption_dropout=0.0, shuffle_tags=False)
    assert caption_for_sample(item, plain, random.Random(0)) == "mystyle, b, c, d, e"


def test_broken_metadata_and_escaping_caption_links_are_noted_not_fatal(tmp_path):
    root = tmp_path / "root"
    save_image(root / "a.png")
    save_image(root / "sub" / "b.png")
    (root / "metadata.csv").write_text("name,caption\na.png,hello\n")
    (root / "sub" / "metadata.csv").write_text('file_name,text\nb.png,"' + "x" * 200_000 + '"\n')
    (tmp_path / "secret.txt").write_text("private words")
    os.symlink(tmp_path / "secret.txt", root / "a.txt")

    captions, dataset = _captions(root, trigger="sks")

    assert captions == {"a.png": ("sks", ""), "sub/b.png": ("sks", "")}
    notes = {note.path.relative_to(root).as_posix(): note.reason for note in dataset.notes}
    assert "needs 'file_name' and 'text' columns (found: name, caption)" in notes["metadata.csv"]
    assert "not valid CSV" in notes["sub/metadata.csv"]
    assert "outside the dataset folder" in notes["a.txt"]
