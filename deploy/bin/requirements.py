#!/usr/bin/env python3
"""Print the pinned requirements of robustdx (its dependencies plus the named extras) from pyproject.toml.

Why: the Dockerfile installs the dependencies in a layer of their own, built from pyproject.toml alone,
so a code change does not reinstall torch; the package itself is installed afterwards with --no-deps.
This keeps pyproject.toml the only place where versions are pinned.

    python deploy/bin/requirements.py serve            # core dependencies + the "serve" extra
    python deploy/bin/requirements.py orchestrate --pyproject path/to/pyproject.toml
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The project's dependencies followed by each extra's, in order, without duplicates.

    Raises:
        SystemExit: an extra that pyproject.toml does not define (names the ones it does).
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra {', '.join(unknown)} in {pyproject}; defined: {', '.join(sorted(optional))}")
    out: list[str] = []
    for req in [*project.get("dependencies", []), *(r for e in extras for r in optional[e])]:
        if req not in out:
            out.append(req)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*", help="extras to include, e.g. serve or orchestrate")
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"), help="default: ./pyproject.toml")
    args = parser.parse_args(argv)
    sys.stdout.write("".join(f"{r}\n" for r in requirements(args.pyproject, args.extras)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
