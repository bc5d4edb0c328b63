"""The training progress bar: a rich bar per epoch on a terminal, nothing at all when disabled.

Why a wrapper: CI logs and Ray workers want no bar (``RunConfig.progress = False``, ``--no-progress``),
and the training loop should not branch on that at every step; a disabled :class:`ProgressBar` takes
the same calls and does nothing (rich is not even imported).
"""

from __future__ import annotations

from typing import Any


class ProgressBar:
    """A rich progress bar, or nothing when disabled (CI logs, Ray workers)."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                transient=False,
            )

    def __enter__(self) -> ProgressBar:
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar:
            self.bar.__exit__(*exc)

    def task(self, description: str, total: int) -> Any:
        """Add a bar of ``total`` steps; its handle (None when disabled) goes to :meth:`advance`."""
        return self.bar.add_task(description, total=total, info="") if self.bar else None

    def advance(self, task: Any, info: str = "") -> None:
        """One step done on ``task``; ``info`` is shown beside the bar (e.g. the last loss)."""
        if self.bar:
            self.bar.update(task, advance=1, info=info)
