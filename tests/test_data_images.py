"""Opening images: orientation, colour modes, and every bad file rejected with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from data.make_bad_dataset import make_bad_files, save_image, write_png_header
from PIL import Image

from studio.data import load_rgb, probe_image, to_rgb
from studio.errors import DatasetError


def _exif_rotated_jpeg(path):
    """40x20 stored, left half red, right half blue, EXIF orientation 6 (display rotated 90 deg CW)."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


def _close(pixel, expected, tolerance=12):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def test_exif_orientation_is_honoured(tmp_path):
    path = _exif_rotated_jpeg(tmp_path / "rotated.jpg")
    assert (probe_image(path).width, probe_image(path).height) == (20, 40)
    image, original = load_rgb(path)
    assert image.size == (20, 40) and original == (20, 40)
    # Rotating 90 deg clockwise puts the stored left (red) half at the top.
    assert _close(image.getpixel((10, 5)), (255, 0, 0))
    assert _close(image.getpixel((10, 35)), (0, 0, 255))


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (4, 4), (0, 0, 0, 0)),
        Image.new("LA", (4, 4), (0, 0)),
        Image.new("RGBa", (4, 4), (0, 0, 0, 0)),
    ],
    ids=["RGBA", "LA", "RGBa"],
)
def test_transparent_pixels_become_white(image):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.getpixel((1, 1)) == (255, 255, 255)


def test_partial_alpha_blends_onto_white_and_palette_transparency(tmp_path):
    assert _close(to_rgb(Image.new("RGBA", (2, 2), (255, 0, 0, 128))).getpixel((0, 0)), (255, 127, 127), 2)

    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (4, 0, 8, 8))
    palette.save(tmp_path / "p.png", transparency=0)
    image, _ = load_rgb(tmp_path / "p.png")
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent index: white, not black
    assert image.getpixel((6, 6)) == (0, 255, 0)


def test_sixteen_bit_grey_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32768, 65535]] * 16, dtype=np.uint16)
    values = np.repeat(values, 4, axis=1)  # 16x16
    Image.fromarray(values).save(tmp_path / "g16.png")
    image, _ = load_rgb(tmp_path / "g16.png")
    row = [image.getpixel((x, 0))[0] for x in (0, 4, 8, 12)]
    assert row == [0, 4, 128, 255]


def test_cmyk_and_grey_jpegs_convert_to_rgb(tmp_path):
    save_image(tmp_path / "cmyk.jpg", (32, 32), (0, 255, 255, 0), mode="CMYK")
    save_image(tmp_path / "grey.jpg", (32, 32), 90, mode="L")
    assert _close(load_rgb(tmp_path / "cmyk.jpg")[0].getpixel((8, 8)), (255, 0, 0))
    grey = load_rgb(tmp_path / "grey.jpg")[0]
    assert grey.mode == "RGB" and len(set(grey.getpixel((8, 8)))) == 1


def test_jpeg_draft_decode_still_covers_the_requested_size(tmp_path):
    save_image(tmp_path / "big.jpg", (1600, 1200))
    image, original = load_rgb(tmp_path / "big.jpg", min_size=(256, 192))
    assert original == (1600, 1200)
    assert image.width >= 256 and image.height >= 192 and image.width < 1600  # decoded smaller


def test_every_bad_file_gets_a_reason_and_no_exception_escapes(tmp_path):
    expected = make_bad_files(tmp_path)
    for name, fragment in expected.items():
        with pytest.raises(DatasetError) as caught:
            probe_image(tmp_path / name)
        assert fragment in caught.value.message, (name, caught.value.message)
        assert caught.value.path == str(tmp_path / name)


def test_bomb_is_refused_from_the_header_even_without_pils_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = write_png_header(tmp_path / "bomb.png", 20000, 10000)
    with pytest.raises(DatasetError, match="decompression bomb: 20000x10000"):
        probe_image(path)


def test_animated_images_report_frames_and_load_the_first(tmp_path):
    frames = [Image.new("RGB", (32, 32), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    for name in ("anim.gif", "anim.webp"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], duration=50, loop=0)
        assert probe_image(tmp_path / name).frames == 3
        assert _close(load_rgb(tmp_path / name)[0].getpixel((5, 5)), (255, 0, 0), 20)
