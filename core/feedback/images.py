"""Content-addressed image store: an image kept for review and retraining lives at ``ROOT/ab/abcdef….ext``,
named by the SHA-256 of its bytes.

Why content addressing: the same image sent twice is stored once, a snapshot names images by hash and can
check them, and nothing can change an image without changing its name. Only images a client opts in to are
stored (privacy by default)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

_EXT = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg"}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ext(data: bytes) -> str:
    return next((e for magic, e in _EXT.items() if data.startswith(magic)), ".img")


class ImageStore:
    """A folder of images named by content hash (an object-store bucket mounted or synced there in compose)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path_of(self, sha256: str) -> Path | None:
        """Where the image of ``sha256`` is, or None when it was never stored."""
        folder = self.root / sha256[:2]
        found = sorted(folder.glob(f"{sha256}.*")) if folder.is_dir() else []
        return found[0] if found else None

    def put(self, data: bytes) -> tuple[str, Path]:
        """Store ``data`` (once: an image already there is left alone); returns its hash and path."""
        digest = sha256_bytes(data)
        existing = self.path_of(digest)
        if existing is not None:
            return digest, existing
        path = self.root / digest[:2] / f"{digest}{_ext(data)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)  # atomic: a reader never sees half an image
        return digest, path

    def verify(self, sha256: str) -> Path:
        """The image's path after checking its bytes still hash to its name.

        Raises:
            FileNotFoundError: not stored.
            ValueError: the file was altered.
        """
        path = self.path_of(sha256)
        if path is None:
            raise FileNotFoundError(f"image {sha256[:12]}… is not in the image store {self.root}")
        actual = sha256_bytes(path.read_bytes())
        if actual != sha256:
            raise ValueError(f"image {path} was altered: its bytes hash to {actual[:12]}…, not {sha256[:12]}…")
        return path
