"""The Bento for real: ``bentoml build`` of a promoted model (:func:`robustdx.flows.bento.build_bento`), then
``bentoml serve robustdx:<version>`` on 127.0.0.1, answering with the model it was built for — with no
production pointer in its home, so the Bento alone names the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from robustdx.core.config import parse_config
from robustdx.core.release.pointer import read_production
from robustdx.core.release.store import save_bundle_to_store
from robustdx.core.training.recipes import run_recipe
from robustdx.flows.bento import BENTO_NAME, bento_info, build_bento
from tests.integration.service_harness import png_bytes
from tests.support.configs import tiny_raw
from tests.support.procs import start_on_free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BENTOML = str(Path(sys.executable).with_name("bentoml"))


@pytest.fixture(scope="module")
def built(camelyon_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny model saved in a fresh BentoML home (no pointer: nothing was promoted there) and its Bento."""
    folder = tmp_path_factory.mktemp("bento")
    home = folder / "bentoml"
    result = run_recipe(parse_config(tiny_raw(camelyon_root, folder / "runs")))
    tag = save_bundle_to_store(result.bundle, home)
    return {"home": str(home), "tag": tag, "bento": build_bento(tag, home), "folder": str(folder)}


def test_the_bento_declares_the_model_its_argument_and_the_model_card(built: dict[str, str]) -> None:
    version = built["tag"].partition(":")[2]
    assert built["bento"] == f"{BENTO_NAME}:{version}"  # versioned like the model it serves
    info = bento_info(built["bento"], built["home"])
    assert info is not None
    assert [m["tag"] for m in info["services"][0]["models"]] == [built["tag"]]
    assert info["args"] == {"model_tag": built["tag"]}
    bento_dir = Path(built["home"]) / "bentos" / BENTO_NAME / version
    assert (bento_dir / "README.md").read_text().startswith("# Model card: robustdx")
    assert (bento_dir / "env" / "docker" / "Dockerfile").is_file()  # what `bentoml containerize` builds from
    wheels = [p.name for p in (bento_dir / "env" / "python" / "wheels").iterdir()]
    assert wheels == ["robustdx-0.1.0-py3-none-any.whl"]
    assert build_bento(built["tag"], built["home"]) == built["bento"]  # building again returns the stored one


def test_bentoml_serve_of_the_bento_serves_its_model(built: dict[str, str]) -> None:
    home = built["home"]
    assert read_production(home) is None
    env = {"BENTOML_HOME": home, "BENTOML_DO_NOT_TRACK": "True", "ROBUSTDX_ADMIN_TOKEN": "t0ken", "ROBUSTDX_CPU": "1"}
    with start_on_free_port(
        "bento",
        lambda port: [BENTOML, "serve", built["bento"], "--host", "127.0.0.1", "--port", str(port)],
        Path(built["folder"]) / "serve.log",
        ready="/readyz",
        env=lambda _port: env,
        timeout=120,
    ) as served:
        card = httpx.get(f"{served.url}/model", timeout=10).json()
        assert card["tag"] == built["tag"] and card["pinned_by_env"] == built["tag"]
        image = png_bytes(np.full((16, 16, 3), 128, np.uint8))
        answer = httpx.post(f"{served.url}/predict", files=[("images", ("x.png", image, "image/png"))], timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["model_version"] == card["version"]
        docs = httpx.get(f"{served.url}/docs.json", timeout=10).json()
        assert docs["info"]["description"].startswith("# Model card: robustdx")  # the Swagger UI's introduction
        reload = httpx.post(f"{served.url}/admin/reload", headers={"Authorization": "Bearer t0ken"}, timeout=10)
        assert reload.status_code == 409 and "pinned" in reload.json()["error"]


def test_a_bad_argument_stops_the_service_naming_it(built: dict[str, str]) -> None:
    done = subprocess.run(
        [BENTOML, "serve", "robustdx.service.app:RobustDx", "--port", "1", "--arg", "max_batch_size=abc"],
        env={**os.environ, "BENTOML_HOME": built["home"], "BENTOML_DO_NOT_TRACK": "True"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "ROBUSTDX_MAX_BATCH_SIZE='abc'" in done.stderr and "--arg max_batch_size" in done.stderr, done.stderr[-2000:]


def test_pyproject_build_config_matches_the_serve_extra() -> None:
    import tomllib

    from robustdx.flows.bento import source_checkout, wheel_name

    repo = source_checkout()
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text())
    build = pyproject["tool"]["bentoml"]["build"]
    assert build["python"]["packages"] == pyproject["project"]["optional-dependencies"]["serve"]
    assert build["python"]["wheels"] == [wheel_name(repo)]
    assert build["python"]["lock_packages"] is False  # locking needs the network
    assert json.dumps(build["service"]) == '"robustdx.service.app:RobustDx"'
