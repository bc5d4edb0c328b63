"""Test helpers for the service: the local server (see :mod:`robustdx.service.local`) and image bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from robustdx.core.util import free_port
from robustdx.service.local import LocalServer as Server

__all__ = ["Server", "free_port", "png_bytes"]


def png_bytes(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    """Encode an array (uint8/uint16, HxW or HxWxC) as an image file."""
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt) if mode else Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()
