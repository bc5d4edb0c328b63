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
