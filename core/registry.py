"""Name -> factory registries with helpful lookup errors.

Why: regimes, attacks, models and data sets are chosen by name in YAML configs; a registry keeps
that choice declarative (no if/elif chains) and lets every lookup error list the valid names and
suggest the nearest one (``resnt18`` -> ``resnet18``).
"""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Generic, TypeVar

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)


def suggest(value: str, choices: list[str]) -> str:
    """Return a " Did you mean 'x'?" hint for ``value`` among ``choices`` (or an empty string)."""
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    """A named collection of factories (or strategy classes).

    Args:
        kind: what the registry holds, used in error messages ("model", "attack", ...).
        deprecated: old name -> new name; looking up an old name warns and redirects.
    """

    def __init__(self, kind: str, deprecated: dict[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._deprecated = dict(deprecated or {})

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``; a duplicate name is a programming error."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise ``KeyError`` listing the valid names."""
        if name in self._deprecated:
            new = self._deprecated[name]
            warnings.warn(f"{self.kind} {name!r} is deprecated; use {new!r}", DeprecationWarning, stacklevel=2)
            name = new
        try:
            return self._items[name]
        except KeyError:
            names = sorted(self._items)
            raise KeyError(f"unknown {self.kind} {name!r}.{suggest(name, names)} Valid: {', '.join(names)}") from None

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a glob ``pattern``, sorted."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))


def parse_option(enum: type[E], value: StrEnum | str, what: str) -> E:
    """``enum(value)`` with an error that names the bad value, lists the valid ones and suggests the nearest.

    >>> class Reduce(StrEnum):
    ...     SUM = "sum"
    ...     ABS = "abs"
    >>> parse_option(Reduce, "abs", "reduce")
    <Reduce.ABS: 'abs'>
    >>> parse_option(Reduce, "ab", "reduce")
    Traceback (most recent call last):
    ...
    ValueError: unknown reduce 'ab'; valid: sum, abs. Did you mean 'abs'?
    """
    try:
        return enum(value)
    except ValueError:
        names = [m.value for m in enum]
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(names)}.{suggest(str(value), names)}") from None
