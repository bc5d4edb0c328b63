"""The promoted model as a Bento: the deployable unit of BentoML (code, pinned dependencies, model, description).

:func:`build_bento` runs what a user would type in the checkout, as subprocesses with the store's
``BENTOML_HOME``: ``pip wheel --no-deps -w dist .`` (the service's code ships as the project's wheel:
``robustdx.*`` are package-dir mappings a Bento's source tree could not import), then
``bentoml build --arg model_tag=<tag> --version <model version>`` on ``[tool.bentoml.build]`` in
``pyproject.toml``. The argument pins the service to the promoted model, which it declares as a
``bentoml.models.BentoModel`` (:mod:`robustdx.service.app`), and the model card becomes the Bento's
description (its README, the Swagger UI's introduction). The Bento is named ``robustdx`` and versioned like the
model, so ``bentoml serve robustdx:<version>`` serves exactly what promotion checked, and
``bentoml containerize robustdx:<version>`` makes the serve image (Docker is not needed to build the Bento).

Why subprocesses: BentoML reads its home once per process, and building imports the service module, whose
settings are read at import; a child process keeps both out of the flow's own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from filelock import FileLock

from robustdx.core.release.pointer import bentoml_home
from robustdx.flows.stackconf import repo_root

BENTO_NAME = "robustdx"  # @bentoml.service(name=...) in service/app.py


class BentoBuildError(RuntimeError):
    """The Bento could not be built (the message carries the failing command's output)."""


def source_checkout() -> Path:
    """The checkout this module runs from (:func:`robustdx.flows.stackconf.repo_root`), if its ``pyproject.toml``
    holds ``[tool.bentoml.build]``.

    Raises:
        BentoBuildError: no such file there (an installed wheel has no pyproject.toml to build from).
    """
    repo = repo_root()
    pyproject = repo / "pyproject.toml"
    if pyproject.is_file() and "build" in tomllib.loads(pyproject.read_text()).get("tool", {}).get("bentoml", {}):
        return repo
    raise BentoBuildError(f"no pyproject.toml with [tool.bentoml.build] in {repo}: building a Bento needs the checkout")


def wheel_name(repo: Path) -> str:
    """``dist/robustdx-<version>-py3-none-any.whl``: the wheel ``[tool.bentoml.build.python].wheels`` names."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    return f"dist/{project['name']}-{project['version']}-py3-none-any.whl"


def _bentoml() -> str:
    """The ``bentoml`` command of this interpreter's environment."""
    return str(Path(sys.executable).with_name("bentoml"))


def _env(home: Path | str | None) -> dict[str, str]:
    """This environment for a BentoML subprocess on ``home``'s stores."""
    return {**os.environ, "BENTOML_HOME": str(bentoml_home(home)), "BENTOML_DO_NOT_TRACK": "True"}


def _run(cmd: list[str], repo: Path, env: dict[str, str], timeout: float) -> str:
    try:
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BentoBuildError(f"`{' '.join(cmd)}` took more than {timeout:.0f} s") from None
    if done.returncode != 0:
        raise BentoBuildError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


def bento_info(bento: str, home: Path | str | None = None) -> dict | None:
    """``bentoml get <bento> -o json``, or None when the store has no such Bento."""
    done = subprocess.run([_bentoml(), "get", bento, "-o", "json"], env=_env(home), capture_output=True, text=True, check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def build_bento(tag: str, home: Path | str | None = None, repo: Path | None = None, timeout: float = 600.0) -> str:
    """Build the Bento serving model ``tag`` (``name:version``) into ``home``'s Bento store; returns its tag.

    A Bento of that version already in the store is returned as it is (a rollback and re-promotion, a retry).

    Raises:
        BentoBuildError: no checkout to build from, or ``pip wheel`` / ``bentoml build`` failed.
    """
    version = tag.partition(":")[2]
    bento = f"{BENTO_NAME}:{version}"
    if bento_info(bento, home) is not None:
        return bento
    repo = repo or source_checkout()
    (repo / "dist").mkdir(exist_ok=True)
    with FileLock(repo / "dist" / ".build.lock"):  # one build at a time rewrites dist/'s wheel
        return _build(tag, version, home, repo, timeout)


def _build(tag: str, version: str, home: Path | str | None, repo: Path, timeout: float) -> str:
    bento = f"{BENTO_NAME}:{version}"
    env = _env(home)
    env.pop("ROBUSTDX_MODEL_TAG", None)  # the argument names the model
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", "dist", "."], repo, env, timeout)
    if not (repo / wheel_name(repo)).is_file():
        raise BentoBuildError(f"pip wheel did not write {repo / wheel_name(repo)}")
    out = _run([_bentoml(), "build", "--arg", f"model_tag={tag}", "--version", version, "-o", "tag", "."], repo, env, timeout)
    built = next((line.split("__tag__:", 1)[1].strip() for line in out.splitlines() if "__tag__:" in line), None)
    if built != bento:
        raise BentoBuildError(f"bentoml build reported {built!r}, expected {bento!r}:\n{out[-2000:]}")
    return bento
