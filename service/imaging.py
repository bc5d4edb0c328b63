"""Decoding and checking uploaded images (no BentoML here, so it is testable alone).

Every refusal raises :class:`ImageError` with a message that names the problem; the service turns it
into a 4xx JSON error. Accepted: PNG and JPEG; modes 1/L/P/LA/PA/RGB/RGBA/CMYK/YCbCr and 16-bit
greyscale (``I;16*``/``I``, scaled by 65535). Alpha is composited on white (the slide background);
greyscale is replicated to RGB. Floating-point images are refused.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from torch import Tensor

FORMATS = ("PNG", "JPEG")
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageError(ValueError):
    """An upload that is not a usable image (the message says why)."""


@dataclass(frozen=True)
class ImageLimits:
    """Upload limits; the service sets them from ``ROBUSTDX_MAX_IMAGE_BYTES`` / ``ROBUSTDX_MAX_IMAGE_PIXELS``
    (:meth:`robustdx.service.settings.ServiceSettings.image_limits`), whose defaults are these."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096


def open_checked(data: bytes | Path, limits: ImageLimits) -> Image.Image:
    """Open, size-check and fully decode an upload; return an RGB PIL image."""
    raw = Path(data).read_bytes() if isinstance(data, Path) else data
    if len(raw) == 0:
        raise ImageError("empty upload (0 bytes): send a PNG or JPEG image")
    if len(raw) > limits.max_bytes:
        raise ImageError(f"image too large: {len(raw)} bytes > limit {limits.max_bytes} (ROBUSTDX_MAX_IMAGE_BYTES)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw), formats=list(FORMATS))
            w, h = img.size
            if w * h > limits.max_pixels:
                raise ImageError(
                    f"image too large: {w}x{h} = {w * h} pixels > limit {limits.max_pixels} (ROBUSTDX_MAX_IMAGE_PIXELS)"
                )
            if w < 1 or h < 1:
                raise ImageError(f"image has no pixels ({w}x{h})")
            img.load()
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
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB 8-bit view of any supported mode (see module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in SIXTEEN_BIT:
        a = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if (mode.startswith("I;16") or a.max(initial=0) > 255) else 255.0
        g = np.clip(a / scale * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=2), "RGB")
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
