"""Near-duplicate images by perceptual hash (dHash): resized, re-encoded or lightly edited copies.

Byte-identical files are found by sha256 in the report; these are the copies a hash of bytes
misses. dHash compares each pixel of a 9x8 greyscale thumbnail with its right neighbour: 64
bits that survive resizing and JPEG re-encoding, and differ in many bits between different
pictures.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps

HASH_BITS = 64
NEAR = 6  # differing bits (of 64) at or under which two images count as near-duplicates


def dhash(path: Path) -> int:
    """The 64-bit difference hash of the image at ``path`` (EXIF orientation applied)."""
    with Image.open(path) as image:
        image.draft("L", (64, 64))  # JPEG: decode at reduced size, much faster on large photos
        grey = ImageOps.exif_transpose(image).convert("L").resize((9, 8), Image.Resampling.LANCZOS)
        pixels = list(grey.getdata())
    bits = 0
    for row in range(8):
        for col in range(8):
            left, right = pixels[row * 9 + col], pixels[row * 9 + col + 1]
            bits = (bits << 1) | (left > right)
    return bits


def near_duplicate_groups(paths: list[Path], hashes: list[int], near: int = NEAR) -> list[list[Path]]:
    """Groups (two or more) of paths whose hashes differ in at most ``near`` bits, linked transitively."""
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            if (hashes[i] ^ hashes[j]).bit_count() <= near:
                parent[root(j)] = root(i)
    groups: dict[int, list[Path]] = {}
    for i, path in enumerate(paths):
        groups.setdefault(root(i), []).append(path)
    return [group for group in groups.values() if len(group) > 1]
