"""The embedded default captioner: captions toyworld scenes offline, like the embedded base model.

It is the project's own small model (``assets/default-captioner``, trained by
``trainers/captioner/train.py``; see the TRAINING.md beside the weights). A toyworld object sits
at one of a few fixed anchors, so one small CNN, shared by all anchors, looks at a crop around
each anchor and says whether an object is there and its shape, colour and size; a tiny MLP reads
the background colours from the image corners, which no object reaches. The words and the
caption template come from the model's config.json, so this code knows nothing of the world
beyond what the trainer wrote there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from studio.errors import StudioError

ASSETS_PACKAGE = "studio_assets"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class Vocabulary:
    """The caption slots' words, in the order of the model's class indices."""

    shapes: list[str]
    colours: list[str]
    sizes: list[str]
    positions: dict[str, tuple[float, float, str]]  # name -> (x, y as fractions, caption phrase)
    image_size: int = 64  # images are resized to this square first
    crop: int = 24  # px at image_size, centred on each anchor

    @classmethod
    def from_json(cls, data: dict) -> Vocabulary:
        positions = {name: (float(x), float(y), str(p)) for name, (x, y, p) in data["positions"].items()}
        return cls(
            data["shapes"], data["colours"], data["sizes"], positions, data["image_size"], data["crop"]
        )

    def to_json(self) -> dict:
        fields = ("shapes", "colours", "sizes", "image_size", "crop")
        return {
            **{k: getattr(self, k) for k in fields},
            "positions": {k: list(v) for k, v in self.positions.items()},
        }


class ToyCaptionNet(nn.Module):
    """Object head on anchor crops (shape incl. "empty" as class 0, colour, size) + background head."""

    def __init__(self, vocab: Vocabulary, width: int = 24):
        super().__init__()
        self.vocab = vocab

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

        side = vocab.crop // 8
        self.features = nn.Sequential(
            *block(3, width), *block(width, 2 * width), *block(2 * width, 4 * width), nn.Flatten()
        )
        self.hidden = nn.Sequential(nn.Linear(4 * width * side * side, 128), nn.ReLU())
        self.shape = nn.Linear(128, len(vocab.shapes) + 1)
        self.colour = nn.Linear(128, len(vocab.colours))
        self.size = nn.Linear(128, len(vocab.sizes))
        n_colours = len(vocab.colours)
        self.background = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 2 * n_colours + 1))

    def forward_objects(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.hidden(self.features(crops))
        return self.shape(h), self.colour(h), self.size(h)

    def forward_background(self, corners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the top colour and of the bottom colour (class 0: plain, no gradient)."""
        out = self.background(corners)
        n = len(self.vocab.colours)
        return out[:, :n], out[:, n:]


def prepare(images: Sequence[Image.Image], vocab: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor crops (B*P, 3, crop, crop) and corner colours (B, 12), both scaled to about [-1, 1]."""
    size = vocab.image_size
    arrays = [np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR)) for img in images]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    half = vocab.crop // 2
    padded = nn.functional.pad(pixels, (half, half, half, half), mode="replicate")
    crops = []
    for x, y, _ in vocab.positions.values():
        cx, cy = round(x * size) + half, round(y * size) + half
        crops.append(padded[:, :, cy - half : cy + half, cx - half : cx + half])
    crops_t = torch.stack(crops, dim=1).flatten(0, 1)
    c = size // 16  # corner patches: no object of the grammar reaches them
    corners = [pixels[:, :, :c, :c], pixels[:, :, :c, -c:], pixels[:, :, -c:, :c], pixels[:, :, -c:, -c:]]
    corner_t = torch.cat([patch.mean(dim=(2, 3)) for patch in corners], dim=1)
    return crops_t, corner_t


def compose(
    vocab: Vocabulary, objects: list[tuple[str, str, str, str]], top: str, bottom: str | None, style: str
) -> str:
    """The toyworld caption template: objects (size, colour, shape, position) then the background;
    as tags, one tag per object and one for the background."""
    background = f"{top} background" if bottom is None else f"{top} to {bottom} gradient background"
    if style == "tags":
        phrases = [
            f"{size} {colour} {shape} {vocab.positions[pos][2]}" for size, colour, shape, pos in objects
        ]
        return ", ".join([*phrases, background])
    phrases = [f"a {size} {colour} {shape} {vocab.positions[pos][2]}" for size, colour, shape, pos in objects]
    scene = f"on {'an' if top[0] in 'aeiou' else 'a'} {background}"
    return " and ".join(phrases) + ", " + scene if phrases else scene


class DefaultCaptioner:
    """``--captioner default``: the embedded toyworld captioner, on CPU or any torch device."""

    styles = ("sentence", "tags")

    def __init__(self, folder: Path | None = None, device: str = "cpu", style: str = "sentence"):
        from safetensors.torch import load_file

        self.name = "default" if folder is None else str(folder)
        folder = folder or default_captioner_dir()
        self.style = style
        self.vocab = Vocabulary.from_json(json.loads((folder / "config.json").read_text()))
        self.device = torch.device(device)
        self.model = ToyCaptionNet(self.vocab)
        state = {
            k: v.float() if v.is_floating_point() else v for k, v in load_file(str(folder / WEIGHTS)).items()
        }
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()

    @torch.no_grad()
    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        if not images:
            return []
        crops, corners = prepare(images, self.vocab)
        shape, colour, size = self.model.forward_objects(crops.to(self.device))
        top, bottom = self.model.forward_background(corners.to(self.device))
        n_pos = len(self.vocab.positions)
        shape = shape.argmax(1).view(len(images), n_pos).tolist()
        colour = colour.argmax(1).view(len(images), n_pos).tolist()
        size = size.argmax(1).view(len(images), n_pos).tolist()
        top_i, bottom_i = top.argmax(1).tolist(), bottom.argmax(1).tolist()
        v = self.vocab
        captions = []
        for i in range(len(images)):
            objects = [
                (v.sizes[size[i][p]], v.colours[colour[i][p]], v.shapes[shape[i][p] - 1], name)
                for p, name in enumerate(v.positions)
                if shape[i][p] > 0
            ]
            low = None if bottom_i[i] == 0 else v.colours[bottom_i[i] - 1]
            captions.append(compose(v, objects, v.colours[top_i[i]], low, self.style))
        return captions


def default_captioner_dir() -> Path:
    """The embedded captioner's folder inside the installed ``studio_assets`` package."""
    try:
        folder = Path(str(resources.files(ASSETS_PACKAGE) / "default-captioner"))
    except ModuleNotFoundError:
        folder = None
    if folder is None or not (folder / WEIGHTS).is_file():
        raise StudioError(
            "the embedded default captioner is missing from this installation",
            hint="reinstall the studio (pip install .) or pass --captioner with a model folder",
        )
    return folder
