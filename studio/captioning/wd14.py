"""Booru-style tags from a WD14 ONNX tagger through onnxruntime (an optional extra).

The SmilingWolf ``wd-*-tagger`` layout: ``model.onnx`` (NHWC float32 BGR 0-255 in, one sigmoid
score per tag out) and ``selected_tags.csv`` (``tag_id,name,category,count``; category 9 is a
rating, 4 a character, 0 a general tag). Images are padded to a white square and resized to the
model's input side, as the reference preprocessing does.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from studio.errors import StudioError

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
RATING = "9"
# Tags that are faces drawn with underscores: replacing them with spaces would break them.
KAOMOJI = frozenset(
    [
        "0_0",
        "(o)_(o)",
        "+_+",
        "+_-",
        "._.",
        "<o>_<o>",
        "<|>_<|>",
        "=_=",
        ">_<",
        "3_3",
        "6_9",
        ">_o",
        "@_@",
        "^_^",
        "o_o",
        "u_u",
        "x_x",
        "|_|",
        "||_||",
    ]
)


@dataclass(frozen=True)
class Tag:
    name: str
    category: str


def read_tags(path: Path) -> list[Tag]:
    """Tags in model-output order, names with underscores turned into spaces (kaomoji kept)."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return [
            Tag(r["name"] if r["name"] in KAOMOJI else r["name"].replace("_", " "), r["category"])
            for r in rows
        ]
    except (OSError, KeyError, UnicodeDecodeError) as exc:
        raise StudioError(
            f"cannot read the tag list ({exc})", path=path, hint="a wd-*-tagger selected_tags.csv"
        ) from None


class WD14Tagger:
    """Tags scoring at least ``threshold``, best first, ratings and ``exclude`` dropped."""

    styles = ("tags",)

    def __init__(
        self,
        folder: Path,
        device: str = "cpu",
        max_length: int = 40,
        threshold: float = 0.35,
        exclude: Sequence[str] = (),
    ):
        try:
            import onnxruntime
        except ImportError:
            raise StudioError(
                "the WD14 tagger needs onnxruntime, which is not installed",
                hint="pip install 'sd-style-studio[tagger]'",
            ) from None
        self.name = str(folder)
        self.tags = read_tags(folder / TAGS_FILE)
        self.max_length = max_length
        self.threshold = threshold
        self.exclude = {t.strip().replace("_", " ") for t in exclude if t.strip()}
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = onnxruntime.InferenceSession(str(folder / MODEL_FILE), providers=providers)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.side = int(model_input.shape[1])
        outputs = self.session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != len(self.tags):
            raise StudioError(
                f"the model scores {outputs} tags but {TAGS_FILE} lists {len(self.tags)}",
                path=folder,
                hint="use the selected_tags.csv that came with this model.onnx",
            )

    def _pixels(self, image: Image.Image) -> np.ndarray:
        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image.convert("RGB"), ((side - image.width) // 2, (side - image.height) // 2))
        square = square.resize((self.side, self.side), Image.BICUBIC)
        return np.asarray(square, dtype=np.float32)[:, :, ::-1]  # RGB -> BGR

    def scores(self, images: Sequence[Image.Image]) -> np.ndarray:
        batch = np.ascontiguousarray(np.stack([self._pixels(image) for image in images]))
        return self.session.run(None, {self.input_name: batch})[0]

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        captions = []
        for row in self.scores(images):
            picked = [
                (score, tag.name)
                for score, tag in zip(row.tolist(), self.tags)
                if score >= self.threshold and tag.category != RATING and tag.name not in self.exclude
            ]
            picked.sort(key=lambda item: -item[0])  # stable: equal scores keep the file's order
            captions.append(", ".join(name for _, name in picked[: self.max_length]))
        return captions
