"""``robustdx data snapshot``: freeze the base training set and accepted clinician feedback into a data snapshot."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from robustdx.cli.common import ConfigOpt, HomeOpt, SetOpt, console, fail
from robustdx.core.config import load_config
from robustdx.core.errors import ConfigError, DataError


def _until(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {value!r} (e.g. 2026-11-30T12:00:00+00:00)") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def snapshot(
    config: ConfigOpt,
    set_: SetOpt = None,
    home: HomeOpt = None,
    db: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL of the inference log (default: the service's, SQLite in HOME/feedback)."),
    ] = None,
    images: Annotated[Path | None, typer.Option(help="The service's image store (default: HOME/feedback/images).")] = None,
    until: Annotated[str | None, typer.Option(help="Take feedback recorded up to this ISO 8601 time (default: now).")] = None,
    recent_share: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share of feedback images held out as 'recent' validation data.")
    ] = 0.25,
    out: Annotated[Path, typer.Option(help="Folder of the snapshots.")] = Path("runs/snapshots"),
) -> None:
    """Freeze the config's training split plus the clinician-labelled images accepted up to a time.

    Writes OUT/ID/manifest.json (content hashes, counts per class and source); the same data gives the same ID.
    Train on it with --set data.snapshot=OUT/ID; the bundle's data card then names it.
    """
    from robustdx.core.feedback.images import ImageStore
    from robustdx.core.feedback.snapshot import build_snapshot
    from robustdx.core.feedback.store import FeedbackStore, default_locations

    default_db, default_images = default_locations(home)
    try:
        cfg = load_config(config, set_ or [])
        store = FeedbackStore(db or default_db)
        store.migrate()
        with console.status("hashing the base training set and reading the feedback"):
            snap = build_snapshot(cfg.data, store, ImageStore(images or default_images), out, _until(until), recent_share)
    except (ConfigError, DataError, ValueError) as err:
        fail(err)
    fb, base = snap.manifest["feedback"], snap.manifest["base"]
    console.print(
        f"snapshot [bold]{snap.id}[/] {'written' if snap.created else 'exists already'}: {snap.path}\n"
        f"  base ({base['dataset']}): {base['n']} images {base['per_class']}\n"
        f"  feedback up to {snap.manifest['until']}: {fb['n']} images, train {fb['per_class']['train']}, "
        f"recent {fb['per_class']['recent']}; {fb['disputed']} disputed, {fb['missing_images']} without a stored image\n"
        f"train on it: --set data.snapshot={snap.path}"
    )


def register(data_app: typer.Typer) -> None:
    """Add ``snapshot`` to the ``data`` command group."""
    data_app.command("snapshot")(snapshot)
