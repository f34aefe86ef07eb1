"""A small CLIP-compatible BPE tokenizer, trained in code so tiny models work offline.

Real SD tokenizers ship with the base model. Tiny test and default models need one
too, and no vocabulary may be downloaded, so we train a byte-level BPE with CLIP's
exact normalisation and pre-tokenisation and the ``</w>`` end-of-word suffix. The
result loads with ``CLIPTokenizer`` like any SD tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)

# Words the tiny models are likely to see: the scene grammar, common style words and the
# sample datasets' captions. Anything else still tokenizes, byte by byte.
DEFAULT_CORPUS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "at",
    "and",
    "with",
    "without",
    "to",
    "by",
    "from",
    "top",
    "bottom",
    "left",
    "right",
    "center",
    "middle",
    "corner",
    "small",
    "large",
    "big",
    "tiny",
    "huge",
    "medium",
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "diamond",
    "heart",
    "hexagon",
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
    "gray",
    "grey",
    "cyan",
    "magenta",
    "teal",
    "gold",
    "silver",
    "background",
    "gradient",
    "plain",
    "sky",
    "sea",
    "field",
    "room",
    "wall",
    "floor",
    "shape",
    "shapes",
    "object",
    "objects",
    "scene",
    "picture",
    "photo",
    "photograph",
    "painting",
    "drawing",
    "sketch",
    "illustration",
    "render",
    "style",
    "art",
    "artwork",
    "design",
    "logo",
    "poster",
    "ink",
    "outline",
    "halftone",
    "watercolor",
    "watercolour",
    "pastel",
    "neon",
    "pixel",
    "mosaic",
    "stained",
    "glass",
    "flat",
    "vector",
    "oil",
    "acrylic",
    "charcoal",
    "pencil",
    "pen",
    "comic",
    "anime",
    "cartoon",
    "cinematic",
    "vintage",
    "retro",
    "modern",
    "minimal",
    "abstract",
    "portrait",
    "landscape",
    "still",
    "life",
    "city",
    "street",
    "mountain",
    "river",
    "forest",
    "flower",
    "tree",
    "house",
    "cat",
    "dog",
    "bird",
    "horse",
    "person",
    "woman",
    "man",
    "girl",
    "boy",
    "face",
    "hand",
    "eye",
    "hair",
    "dress",
    "shirt",
    "light",
    "dark",
    "bright",
    "soft",
    "hard",
    "warm",
    "cool",
    "detailed",
    "simple",
    "clean",
    "rough",
    "thick",
    "thin",
    "bold",
    "lines",
    "line",
    "dots",
    "dot",
    "stripes",
    "texture",
    "paper",
    "canvas",
    "brand",
    "high",
    "quality",
    "masterpiece",
    "best",
    "worst",
    "low",
    "blurry",
    "noisy",
    "one",
    "two",
    "three",
    "four",
    "five",
    "many",
    "some",
    "is",
    "are",
]


def train_clip_bpe(words: Iterable[str], vocab_size: int = 4096) -> tuple[dict[str, int], list[str]]:
    """Return ``(vocab, merges)`` in CLIP's file layout: bytes, bytes+``</w>``, merges, specials."""
    words = list(words)
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        continuing_subword_prefix="",
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(words)] * 4 + words, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]

    tokens = alphabet + [c + "</w>" for c in alphabet]
    tokens += ["".join(m.split(" ")) for m in merges]
    vocab: dict[str, int] = {}
    for token in tokens + [BOS, EOS]:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def build_tokenizer(words: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 4096) -> CLIPTokenizer:
    vocab, merges = train_clip_bpe(words, vocab_size)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=77)
    # transformers 5 can silently build a 3-token tokenizer from bad arguments: check it.
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"CLIPTokenizer has {len(tokenizer)} tokens, expected {len(vocab)}")
    return tokenizer


def save_tokenizer(tokenizer: CLIPTokenizer, directory: str | Path) -> None:
    tokenizer.save_pretrained(str(directory))
