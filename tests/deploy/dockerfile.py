"""Read the Dockerfile and .dockerignore the way Docker does, for tests that cannot run ``docker build``.

No Docker engine runs on these machines, so the tests check what the images *would* contain and start:
the stages and their instructions (:func:`parse`), and whether a path enters the build context
(:func:`in_context`, Docker's ``.dockerignore`` rules: patterns in order, the last match wins, ``!``
re-includes, a pattern matching a folder matches everything below it).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy.stack import BIN, REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the (joined) line

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD / HEALTHCHECK CMD, else None."""
        text = self.args.split("CMD", 1)[1] if self.keyword == "HEALTHCHECK" else self.args
        text = text.strip()
        return json.loads(text) if text.startswith("[") else None


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def args(self) -> dict[str, str]:
        """``ARG NAME=default`` of this stage."""
        out = {}
        for i in self.all("ARG"):
            name, _, default = i.args.partition("=")
            out[name.strip()] = default.strip().strip('"')
        return out


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: dict[str, Stage]

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first."""
        out = []
        while name in self.stages:
            out.append(self.stages[name])
            name = self.stages[name].base
        return out

    def created_dirs(self, target: str) -> set[str]:
        """Folders a target's ``RUN mkdir -p`` lines create (in its FROM chain)."""
        dirs: set[str] = set()
        for stage in self.chain(target):
            for run in stage.all("RUN"):
                for cmd in re.split(r"&&|;", run.args):
                    words = shlex.split(cmd)
                    if words[:2] == ["mkdir", "-p"]:
                        dirs |= {w for w in words[2:] if w.startswith("/")}
        return dirs


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    return lines


def parse(path: Path = DOCKERFILE) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in _logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args, re.IGNORECASE)
            assert m, f"every stage must be named: FROM {args}"
            stage = Stage(name=m.group(2), base=m.group(1))
            stages[stage.name] = stage
        elif stage is None:
            if keyword == "ARG":
                name, _, default = args.partition("=")
                global_args[name] = default
        else:
            stage.instructions.append(Instruction(keyword, args))
    return Dockerfile(global_args, stages)


def _matches(pattern: str, path: str) -> bool:
    """Docker's match: the pattern matches the path or one of its parent folders (``*`` stays inside
    one path element, ``**`` spans any number)."""
    pattern = pattern.strip("/")
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if "**" in pattern:
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        return any(re.fullmatch(regex, c) for c in candidates)
    depth = pattern.count("/") + 1
    return any(c.count("/") + 1 == depth and fnmatch.fnmatchcase(c, pattern) for c in candidates)


def in_context(path: str, ignore: Path = DOCKERIGNORE) -> bool:
    """Whether ``path`` (relative to the repository root) is sent to the Docker build."""
    included = True
    for raw in ignore.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        if _matches(pattern.lstrip("!"), path):
            included = negate
    return included


def requirements_of(extra: str) -> list[str]:
    """The pinned requirements an image installs for ``extra`` (deploy/bin/requirements.py on pyproject.toml)."""
    out = subprocess.run(
        [sys.executable, str(BIN / "requirements.py"), extra, "--pyproject", str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()
