"""The captioners on tiny random models of the real classes, loaded by the real loading code.

The WD14 tagger is a tiny ONNX graph in the SmilingWolf layout with constant scores (so the
threshold is exact) plus one image-dependent tag; BLIP is a ``BlipForConditionalGeneration``
with tiny sizes and a tiny WordPiece tokenizer, saved with ``save_pretrained``.
"""

from __future__ import annotations

import pytest
from captioner_support import build_tagger, save_images, solid

import studio.cli
from studio.captioning import CaptionerOptions, load_captioner
from studio.errors import StudioError

BLUE, RED = (0, 0, 255), (255, 0, 0)


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    return build_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny-tagger")


def test_tagger_keeps_tags_at_or_over_the_threshold_and_drops_ratings_and_excluded(tagger_dir):
    tagger = load_captioner(str(tagger_dir), CaptionerOptions(tag_threshold=0.5, exclude_tags=("watermark",)))
    assert tagger.styles == ("tags",)
    blue, red = tagger.caption([solid(BLUE), solid(RED)])
    # best first; underscores become spaces except in a kaomoji; 0.5 itself is kept
    assert blue == "blue background, long hair, ^_^, smile"
    assert red == "long hair, ^_^, smile"


def test_tagger_threshold_exclude_and_max_length_change_the_tags(tagger_dir):
    low = load_captioner(str(tagger_dir), CaptionerOptions(tag_threshold=0.25))
    assert low.caption([solid(RED)]) == ["watermark, long hair, ^_^, smile, hatsune miku"]
    short = load_captioner(str(tagger_dir), CaptionerOptions(tag_threshold=0.25, max_length=2))
    assert short.caption([solid(RED)]) == ["watermark, long hair"]
    strict = load_captioner(str(tagger_dir), CaptionerOptions(tag_threshold=0.8))
    assert strict.caption([solid(BLUE), solid(RED)]) == ["blue background, watermark", "watermark"]


def test_tagger_refuses_a_tag_list_of_another_model(tagger_dir, tmp_path):
    import shutil

    broken = shutil.copytree(tagger_dir, tmp_path / "broken")
    lines = (broken / "selected_tags.csv").read_text().splitlines()
    (broken / "selected_tags.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(StudioError, match="scores 8 tags but selected_tags.csv lists 7"):
        load_captioner(str(broken), CaptionerOptions())


def test_tagger_cli_batches_three_images_in_twos_with_a_prefix(tagger_dir, tmp_path, capsys):
    images = save_images(tmp_path / "set", {"a": BLUE, "b": RED, "c": BLUE})
    argv = ["caption", str(tmp_path / "set"), "--captioner", str(tagger_dir), "--batch-size", "2"]
    argv += ["--prefix", "mystyle", "--tag-threshold", "0.7", "--exclude-tags", "watermark, smile"]
    assert studio.cli.main(argv) == 0
    texts = {name: path.with_suffix(".txt").read_text() for name, path in images.items()}
    assert texts == {
        "a": "mystyle, blue background, long hair\n",
        "b": "mystyle, long hair\n",
        "c": "mystyle, blue background, long hair\n",
    }
    assert "captioned 3 image(s)" in capsys.readouterr().out


def test_a_tagger_cannot_write_sentences(tagger_dir, capsys):
    with pytest.raises(StudioError, match="writes tags, not sentence"):
        load_captioner(str(tagger_dir), CaptionerOptions(style="sentence"))


# --- BLIP -------------------------------------------------------------------------------------

WORDS = ["a", "red", "blue", "circle", "square", "on", "the", "left", "right", "background", "picture", "of"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("blip") / "tiny-blip"
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    # transformers 5: the vocabulary goes in as a dict (a vocab_file argument is ignored there)
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")  # as BLIP's own tokenizer
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = BlipConfig(
        text_config={
            **small,
            "vocab_size": len(vocab),
            "max_position_embeddings": 64,
            "bos_token_id": vocab["[DEC]"],
            "pad_token_id": vocab["[PAD]"],
            "sep_token_id": vocab["[SEP]"],
            "eos_token_id": vocab["[SEP]"],
        },
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():  # never end early or emit a special token: every caption has max_length words
        model.text_decoder.cls.predictions.bias[: len(SPECIAL)] = -1e4
    model.save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_tiny_blip_folder_reloads_its_tokenizer(blip_dir):
    from transformers import BlipProcessor

    processor = BlipProcessor.from_pretrained(blip_dir, local_files_only=True)
    assert len(processor.tokenizer) == len(SPECIAL) + len(WORDS)
    assert processor.tokenizer.tokenize("a red circle") == ["a", "red", "circle"]


def test_blip_captions_in_batches_match_one_at_a_time(blip_dir):
    images = [solid(BLUE), solid(RED, (40, 24)), solid((0, 200, 0))]
    blip = load_captioner(str(blip_dir), CaptionerOptions(max_length=5))
    assert type(blip).__name__ == "BlipCaptioner" and blip.styles == ("sentence",)
    batched = blip.caption(images)
    single = [blip.caption([image])[0] for image in images]
    assert batched == single
    assert all(len(text.split()) == 5 and set(text.split()) <= set(WORDS) for text in batched), batched


def test_blip_cli_writes_the_captioners_text_with_the_prefix(blip_dir, tmp_path):
    images = save_images(tmp_path / "set", {"a": BLUE, "b": RED, "c": (0, 200, 0)})
    argv = ["caption", str(tmp_path / "set"), "--captioner", str(blip_dir), "--batch-size", "2"]
    assert studio.cli.main([*argv, "--prefix", "zz", "--max-length", "4", "--device", "cpu"]) == 0
    blip = load_captioner(str(blip_dir), CaptionerOptions(max_length=4))
    expected = blip.caption([solid(c) for c in (BLUE, RED, (0, 200, 0))])
    assert [images[n].with_suffix(".txt").read_text() for n in "abc"] == [f"zz, {t}\n" for t in expected]
