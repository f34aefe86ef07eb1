"""Write broken and awkward image files: for the dataset tests, and to try ``studio dataset check``.

Nothing binary is committed; everything is drawn here. Usage::

    python tests/data/make_bad_dataset.py OUT_DIR   # then: studio dataset check OUT_DIR
"""

from __future__ import annotations

import struct
import sys
import zlib
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


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bad-dataset")
    make_bad_files(out)
    save_image(out / "good.png", (96, 64))
    print(f"wrote {out}")
