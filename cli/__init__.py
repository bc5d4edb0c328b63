"""The ``robustdx`` command line: one Typer app for every command a user runs.

The top layer: it imports :mod:`robustdx.flows` and :mod:`robustdx.service` and neither imports it
(``[tool.importlinter]`` in ``pyproject.toml``). Each module holds the commands of one concern and
registers them on the app in :mod:`robustdx.cli.app`; heavy optional packages (Prefect, Ray, BentoML)
are imported inside the commands that need them, so ``robustdx --help`` works with only the core
dependencies installed.
"""
