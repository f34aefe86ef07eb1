"""Write broken and awkward dataset files: for the dataset tests, and to try ``studio dataset check``.

Nothing binary is committed; everything is drawn here. ``make_corpus`` writes the whole
bad-input corpus (images, captions, names and folders) and says what the scan must do
with each entry. Usage::

    python tests/data/make_bad_dataset.py tests/data/bad   # then: studio dataset check tests/data/bad
"""

from __future__ import annotations

import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


def save_image(
    path: Path, size: tuple[int, int] = (64, 48), color=(200, 30, 30), mode: str = "RGB", **kw
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **kw)
    return path


def save_noise(path: Path, size: tuple[int, int] = (256, 192), seed: int = 0) -> Path:
    """Incompressible pixels, so that cutting or damaging the file always hits image data."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width`` x ``height`` (1-bit grey): a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    first_row = zlib.compress(b"\x00" * (1 + (width + 7) // 8))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", first_row) + chunk(b"IEND", b"")
    )
    return path


def make_bad_files(folder: Path) -> dict[str, str]:
    """Write one file per failure the scan must report; returns ``{name: expected reason fragment}``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is a text file renamed to .png\n")
    (folder / "garbage.jpg").write_bytes(bytes(range(256)) * 4)
    for name in ("truncated.jpg", "truncated.png"):
        data = save_noise(folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    damaged = bytearray(save_noise(folder / "damaged.png", seed=1).read_bytes())
    damaged[2000:2100] = b"x" * 100
    (folder / "damaged.png").write_bytes(bytes(damaged))
    save_image(folder / "dot.png", (1, 1))
    save_image(folder / "thin.png", (20000, 20), mode="L", color=0)
    write_png_header(folder / "bomb.png", 30000, 30000)
    return {
        "empty.png": "empty file",
        "notes.png": "contains text",
        "garbage.jpg": "not an image",
        "truncated.jpg": "truncated",
        "truncated.png": "truncated",
        "damaged.png": "corrupt",
        "dot.png": "too small",
        "thin.png": "aspect ratio",
        "bomb.png": "decompression bomb",
    }


@dataclass(frozen=True)
class Expect:
    """What the scan must do with one corpus entry: skip it, or keep it (with a note, maybe)."""

    kept: bool
    says: str = ""  # a fragment of the per-file reason or note; "" = kept silently


def _animated(path: Path, frames: int = 3) -> Path:
    images = [Image.new("RGB", (64, 48), (40 * i, 90, 200)) for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    return path


def _exif_rotated(path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 96x64, shown 64x96
    Image.new("RGB", (96, 64), (10, 120, 10)).save(path, exif=exif)
    return path


def make_corpus(root: Path) -> dict[str, Expect]:
    """Write every bad or awkward input of the corpus under ``root``; ``{relative path: Expect}``."""
    root.mkdir(parents=True, exist_ok=True)
    expect = {name: Expect(False, reason) for name, reason in make_bad_files(root / "broken").items()}
    expect = {f"broken/{name}": e for name, e in expect.items()}

    odd = root / "odd"
    save_image(odd / "cmyk.jpg", mode="CMYK", color=(0, 255, 255, 0))
    Image.fromarray(np.full((48, 64), 40000, dtype=np.uint16)).save(odd / "grey16.png")
    palette = Image.new("P", (64, 48), 1)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(odd / "palette_transparent.png", transparency=0)
    save_image(odd / "grey.png", mode="L", color=128)
    _animated(odd / "animated.gif")
    _animated(odd / "animated.webp")
    _exif_rotated(odd / "rotated.jpg")
    expect.update(
        {
            "odd/cmyk.jpg": Expect(True),
            "odd/grey16.png": Expect(True),
            "odd/palette_transparent.png": Expect(True),
            "odd/grey.png": Expect(True),
            "odd/animated.gif": Expect(True, "animated"),
            "odd/animated.webp": Expect(True, "animated"),
            "odd/rotated.jpg": Expect(True),
        }
    )

    captions = root / "captions"
    for stem, data in {
        "latin1": "caf\xe9 cr\xe8me, still life".encode("latin-1"),
        "bom": "\ufeffa bom caption".encode(),
        "empty": b"",
        "long": " ".join(["word"] * 2000).encode(),
        "trigger_only": b"badstyle",
    }.items():
        save_image(captions / f"{stem}.png")
        (captions / f"{stem}.txt").write_bytes(data)
    expect.update(
        {
            "captions/latin1.png": Expect(True),
            "captions/latin1.txt": Expect(True, "Latin-1"),
            "captions/bom.png": Expect(True),
            "captions/empty.png": Expect(True, "no caption"),
            "captions/long.png": Expect(True, "tokens"),
            "captions/trigger_only.png": Expect(True),
        }
    )

    names = root / "names"
    for name in ("with spaces.png", "ünïcødé 画.png", "-leading-dash.png", "--help.png"):
        save_image(names / name)
        expect[f"names/{name}"] = Expect(True)
    outside = root.parent / f"{root.name}-outside"
    save_image(outside / "secret.png")
    (names / "escape.png").symlink_to(outside / "secret.png")
    expect["names/escape.png"] = Expect(False, "outside the dataset")

    only_captions = root / "3_only_captions"
    only_captions.mkdir(exist_ok=True)
    (only_captions / "orphan.txt").write_text("a caption without its image")
    expect["3_only_captions/orphan.txt"] = Expect(False, "no image")
    save_image(root / "nested" / "a" / "b" / "deep.png")
    expect["nested/a/b/deep.png"] = Expect(True)
    save_image(root / "0_disabled" / "off.png")
    expect["0_disabled"] = Expect(False, "repeat count 0")
    save_image(root / "x_notanumber" / "kept.png")
    expect["x_notanumber"] = Expect(True, "no N_ repeat prefix")
    expect["x_notanumber/kept.png"] = Expect(True)
    return expect


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/bad")
    corpus = make_corpus(out)
    print(f"wrote {len(corpus)} corpus entries under {out}")
