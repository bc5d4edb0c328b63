"""Where the tests find the repository and the real data sets (``../shared/data`` beside the clone)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
