"""Checking and decoding uploaded images (no BentoML here, so it is testable alone).

Two steps, because they run in different places:

* :func:`inspect` reads only the header (format, size, mode) — what the request validator needs. BentoML runs
  validators on the event loop, so nothing there may decode pixels: a 42 KB PNG can expand to 4096² 16-bit
  pixels, and decoding sixteen of them stalled every request for tens of seconds.
* :func:`decode` decodes once, in the API's worker thread: JPEGs through ``draft`` (the decoder's own DCT
  down-scaling to near the model's input size), large images reduced by an integer factor right after decoding,
  the EXIF orientation applied, 16-bit greyscale scaled with integer arithmetic (no float64 copy).

Every refusal raises :class:`ImageError` naming the problem; the service turns it into a 4xx JSON error.
Accepted: PNG and JPEG; modes 1/L/P/LA/PA/RGB/RGBA/CMYK/YCbCr and 16-bit greyscale (``I;16*``/``I``). Alpha is
composited on white (the slide background); greyscale is replicated to RGB. Floating-point images are refused.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from torch import Tensor

FORMATS = ("PNG", "JPEG")
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_MIB = 1 << 20


class ImageError(ValueError):
    """An upload that is not a usable image (the message says why)."""


@dataclass(frozen=True)
class ImageLimits:
    """Upload limits; the service sets them from ``ROBUSTDX_MAX_IMAGE_BYTES`` / ``ROBUSTDX_MAX_IMAGE_PIXELS`` /
    ``ROBUSTDX_MAX_REQUEST_PIXELS`` (:meth:`robustdx.service.settings.ServiceSettings.image_limits`).

    The pixel cap is sized to the models served (32–224 px inputs): a 2048² upload is already ~80x the largest
    input, and the cap bounds the memory one decode can take (2048² RGBA: 16 MB).
    """

    max_bytes: int = 4 * _MIB
    max_pixels: int = 2048 * 2048
    max_request_pixels: int = 4 * 2048 * 2048


@dataclass(frozen=True)
class ImageHeader:
    """What the header says: format, size and mode."""

    format: str
    width: int
    height: int
    mode: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _raw(data: bytes | Path, limits: ImageLimits) -> bytes:
    raw = Path(data).read_bytes() if isinstance(data, Path) else data
    if len(raw) == 0:
        raise ImageError("empty upload (0 bytes): send a PNG or JPEG image")
    if len(raw) > limits.max_bytes:
        raise ImageError(f"image too large: {len(raw)} bytes > limit {limits.max_bytes} (ROBUSTDX_MAX_IMAGE_BYTES)")
    return raw


@contextmanager
def _decoder_errors() -> Iterator[None]:
    """Turn whatever a decoder raises on hostile bytes into the client's :class:`ImageError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not a PNG or JPEG image (could not identify the file)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"image too large: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"corrupt or truncated image: {err}") from None
    except Exception as err:  # a decoder bug on hostile bytes is still the client's bad input
        raise ImageError(f"undecodable image: {type(err).__name__}: {err}") from None


def _open(raw: bytes, limits: ImageLimits) -> Image.Image:
    """The image object (header parsed, pixels not decoded) after the size and mode checks."""
    img = Image.open(io.BytesIO(raw), formats=list(FORMATS))
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if w * h > limits.max_pixels:
        raise ImageError(f"image too large: {w}x{h} = {w * h} pixels > limit {limits.max_pixels} (ROBUSTDX_MAX_IMAGE_PIXELS)")
    if img.mode == "F":
        raise ImageError("floating-point images (mode F) are not supported: send 8/16-bit PNG or JPEG")
    return img


def inspect(data: bytes | Path, limits: ImageLimits) -> ImageHeader:
    """Check an upload from its header only (cheap enough for the event loop); raise :class:`ImageError`."""
    raw = _raw(data, limits)
    with _decoder_errors():
        img = _open(raw, limits)
        return ImageHeader(str(img.format), img.width, img.height, img.mode)


def check_request(headers: list[ImageHeader], limits: ImageLimits) -> None:
    """The per-request total: many images each under the cap must not add up to an expensive request."""
    total = sum(h.pixels for h in headers)
    if total > limits.max_request_pixels:
        raise ImageError(
            f"request too large: {len(headers)} images with {total} pixels in all > limit {limits.max_request_pixels} "
            "(ROBUSTDX_MAX_REQUEST_PIXELS); send fewer or smaller images"
        )


def decode(data: bytes | Path, limits: ImageLimits, size: int | None = None) -> Image.Image:
    """Decode an upload once into an RGB image, at no more than about twice ``size`` when it is given (the model's
    input side): JPEG via the decoder's draft mode, anything larger via an integer reduction after decoding."""
    raw = _raw(data, limits)
    with _decoder_errors():
        img = _open(raw, limits)
        if size is not None and img.format == "JPEG":
            img.draft("RGB", (2 * size, 2 * size))  # DCT scaling: decodes 1/2, 1/4 or 1/8 of the pixels
        img.load()
        img = to_rgb(ImageOps.exif_transpose(img))  # first: Image.reduce has no 16-bit or palette modes
        factor = min(img.size) // (2 * size) if size else 1
        return img.reduce(factor) if factor > 1 else img


def open_checked(data: bytes | Path, limits: ImageLimits) -> Image.Image:
    """Check and decode an upload at full size (kept for callers that need the whole image)."""
    return decode(data, limits)


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) greyscale to 8-bit RGB with integer arithmetic: 0..65535 -> 0..255 (rounded);
    a mode-``I`` image whose values fit in 8 bits is taken as 8-bit."""
    a = np.asarray(img)
    if img.mode.startswith("I;16") or int(a.max(initial=0)) > 255:
        a = (np.clip(a, 0, 65535).astype(np.uint32) + 128) // 257
    g = np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(g[..., None], 3, axis=2), "RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB 8-bit view of any supported mode (see module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in SIXTEEN_BIT:
        return _sixteen_bit_to_rgb(img)
    if mode == "F":
        raise ImageError("floating-point images (mode F) are not supported: send 8/16-bit PNG or JPEG")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError(f"unsupported image mode {mode!r}: {err}") from None


def to_tensor(images: list[Image.Image], size: int) -> Tensor:
    """``[B, 3, size, size]`` float in [0, 1] with the training eval transform (resize, scale)."""
    import torch

    from robustdx.core.data.transforms import eval_transform

    tf = eval_transform(size)
    return torch.stack([tf(im) for im in images])
