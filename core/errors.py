"""User-facing error types, importable without torch (the CLI catches them to print clean messages)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names each bad field."""


class DataError(ValueError):
    """A data set cannot be read; the message names the path and what to do."""


class BundleError(ValueError):
    """A bundle cannot be trusted or used; the message says which file and why."""
