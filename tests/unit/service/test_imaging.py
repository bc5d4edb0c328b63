"""Upload decoding: accepted modes become RGB, every refusal is an ImageError naming the problem."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustdx.service.imaging import ImageError, ImageLimits, open_checked, to_rgb, to_tensor

pytestmark = pytest.mark.unit

LIMITS = ImageLimits()


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_rgb_png_is_returned_as_is_and_a_path_works(tmp_path: Path) -> None:
    arr = np.arange(8 * 6 * 3, dtype=np.uint8).reshape(8, 6, 3)
    path = tmp_path / "x.png"
    path.write_bytes(encode(Image.fromarray(arr)))
    img = open_checked(path, LIMITS)
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), arr)


def _palette() -> Image.Image:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 90, 60, 30] + [0] * 762)
    return img


def _noise_png(side: int = 64) -> bytes:
    return encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)))


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.fromarray(np.full((4, 4), 120, np.uint8)), (120, 120, 120)),  # greyscale replicated
        (Image.fromarray(np.zeros((4, 4, 4), np.uint8)), (255, 255, 255)),  # transparent: white background
        (Image.fromarray(np.full((4, 4), 65535, np.uint16)), (255, 255, 255)),  # 16-bit scaled by 65535
        (_palette(), (90, 60, 30)),  # palette
    ],
)
def test_other_modes_become_rgb(image: Image.Image, expected: tuple[int, int, int]) -> None:
    img = open_checked(encode(image), LIMITS)
    assert img.mode == "RGB" and img.getpixel((1, 1)) == expected


def test_jpeg_is_accepted() -> None:
    img = open_checked(encode(Image.fromarray(np.full((8, 8, 3), 180, np.uint8)), "JPEG"), LIMITS)
    assert img.mode == "RGB" and img.size == (8, 8)


def _tiff() -> bytes:
    return encode(Image.fromarray(np.zeros((4, 4), np.uint8)), "TIFF")


@pytest.mark.parametrize(
    ("data", "limits", "words"),
    [
        (b"", LIMITS, "empty upload"),
        (b"hello, world", LIMITS, "not a PNG or JPEG"),
        (_tiff(), LIMITS, "not a PNG or JPEG"),
        (_noise_png()[: len(_noise_png()) // 2], LIMITS, "truncated"),
        (encode(Image.fromarray(np.zeros((20, 20), np.uint8))), ImageLimits(max_bytes=10), "ROBUSTDX_MAX_IMAGE_BYTES"),
        (encode(Image.fromarray(np.zeros((20, 20), np.uint8))), ImageLimits(max_pixels=399), "ROBUSTDX_MAX_IMAGE_PIXELS"),
    ],
)
def test_refusals_name_the_problem(data: bytes, limits: ImageLimits, words: str) -> None:
    with pytest.raises(ImageError, match=words):
        open_checked(data, limits)


def test_floating_point_images_are_refused() -> None:
    with pytest.raises(ImageError, match="mode F"):
        to_rgb(Image.fromarray(np.zeros((4, 4), np.float32), mode="F"))


def test_to_tensor_resizes_and_scales() -> None:
    images = [Image.fromarray(np.full((20, 30, 3), 255, np.uint8)), Image.fromarray(np.zeros((16, 16, 3), np.uint8))]
    x = to_tensor(images, 16)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones_like(x[0])) and float(x[1].max()) == 0.0


# ---------------------------------------------------------------------------------------------- hardening
def test_inspect_reads_the_header_only() -> None:
    """A PNG whose pixel data is cut off passes the header check (the event loop never decodes) and fails the decode."""
    from robustdx.service.imaging import decode, inspect

    data = _noise_png()[: len(_noise_png()) // 2]
    header = inspect(data, LIMITS)
    assert (header.format, header.width, header.height, header.pixels) == ("PNG", 64, 64, 64 * 64)
    with pytest.raises(ImageError, match="truncated"):
        decode(data, LIMITS)


def test_a_small_file_with_a_huge_canvas_is_refused_from_its_header() -> None:
    """A 16-bit greyscale PNG of 4096² compresses to ~100 KB; refused before any pixel is decoded."""
    from robustdx.service.imaging import inspect

    bomb = encode(Image.fromarray(np.zeros((4096, 4096), np.uint16)))
    assert len(bomb) < 200_000
    with pytest.raises(ImageError, match="ROBUSTDX_MAX_IMAGE_PIXELS"):
        inspect(bomb, LIMITS)


def test_the_request_total_is_capped() -> None:
    from robustdx.service.imaging import ImageHeader, check_request

    limits = ImageLimits(max_pixels=100, max_request_pixels=250)
    check_request([ImageHeader("PNG", 10, 10, "RGB")] * 2, limits)
    with pytest.raises(ImageError, match="ROBUSTDX_MAX_REQUEST_PIXELS"):
        check_request([ImageHeader("PNG", 10, 10, "RGB")] * 3, limits)


def test_sixteen_bit_is_scaled_with_integers() -> None:
    values = np.array([[0, 128, 129, 257, 32896, 65535]], np.uint16)
    img = open_checked(encode(Image.fromarray(values)), LIMITS)
    assert np.asarray(img)[0, :, 0].tolist() == [0, 0, 1, 1, 128, 255]  # round(v / 257)


def test_exif_orientation_is_applied() -> None:
    from robustdx.service.imaging import decode

    arr = np.zeros((4, 8, 3), np.uint8)
    arr[:, :4] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotated 90° clockwise when displayed
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=100)
    out = decode(buf.getvalue(), LIMITS)
    assert out.size == (4, 8)  # width and height swapped
    assert np.asarray(out)[0].mean() > 200 and np.asarray(out)[-1].mean() < 50  # white on top after rotation


def test_large_images_are_decoded_near_the_model_size() -> None:
    from robustdx.service.imaging import decode

    big = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    for fmt in ("JPEG", "PNG"):
        out = decode(encode(Image.fromarray(big), fmt), LIMITS, size=96)
        assert 96 <= min(out.size) <= 4 * 96, (fmt, out.size)
    assert decode(encode(Image.fromarray(big), "PNG"), LIMITS).size == (1024, 1024)  # no size: full resolution


@pytest.mark.parametrize("mode", ["I;16", "P", "LA", "L"])
def test_large_images_of_every_mode_are_reduced(mode: str) -> None:
    """Image.reduce knows no 16-bit or palette images: the conversion to RGB comes first (a 16-bit bomb at
    the pixel cap used to fail here with 'image has wrong mode')."""
    from robustdx.service.imaging import decode

    ramp = np.linspace(0, 65535 if mode == "I;16" else 255, 512 * 512).reshape(512, 512)
    img = Image.fromarray(ramp.astype(np.uint16 if mode == "I;16" else np.uint8))
    img = img if mode in ("I;16", "L") else img.convert(mode)
    out = decode(encode(img, "PNG"), LIMITS, size=32)
    assert out.mode == "RGB" and 32 <= min(out.size) <= 4 * 32
