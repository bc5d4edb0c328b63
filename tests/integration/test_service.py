"""The BentoML service run for real: ``bentoml serve`` on a free 127.0.0.1 port with a tiny trained
model promoted into a temporary BentoML home. Checks every endpoint, the 4xx contract, a seeded fuzz
run of 1,000+ malformed requests, token-protected hot reload under concurrent traffic (zero failed
requests; a tampered bundle is refused), that the drift and robustness metrics move when a
stain-shifted stream is sent, and that start-up stops with a clear message without a model or with
a bad setting."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from robustdx.core.config import parse_config
from robustdx.core.contracts import METRICS
from robustdx.core.release.pointer import read_production, write_production
from robustdx.core.training.recipes import run_recipe
from robustdx.core.util import wait_until
from tests.deploy.stack import stain_patch
from tests.integration.service_harness import Server, png_bytes
from tests.support.configs import tiny_raw
from tests.support.hostile import fuzz_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "test-token-5f1e"
MAX_PIXELS = 256 * 256
MAX_BYTES = 300_000


# ------------------------------------------------------------------------------------------------
# fixtures: two tiny models in a temporary store, one promoted, one tampered copy; the server
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(camelyon_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("bentoml_home")
    runs = tmp_path_factory.mktemp("service_runs")
    with pytest.MonkeyPatch.context() as mp:  # BentoML reads its home once per process: never the user's ~/bentoml
        mp.setenv("BENTOML_HOME", str(home))
        mp.setenv("BENTOML_DO_NOT_TRACK", "True")
        from robustdx.core.release.store import model_path, save_bundle_to_store

        a = run_recipe(parse_config(tiny_raw(camelyon_root, runs, name="svc_a", seed=0)))
        b = run_recipe(parse_config(tiny_raw(camelyon_root, runs, name="svc_b", seed=1)))
        tag_a, tag_b, tag_bad = (save_bundle_to_store(x.bundle, home) for x in (a, b, b))
        metrics = model_path(tag_bad, home) / "metrics.json"
        metrics.write_text(metrics.read_text().replace('"acc"', '"acd"', 1))  # tamper, same size: only the hash catches it
        write_production(home, tag_a)
    return {"home": str(home), "a": tag_a, "b": tag_b, "bad": tag_bad}


@pytest.fixture(scope="module")
def server(store: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    env = {
        "BENTOML_HOME": store["home"],
        "BENTOML_DO_NOT_TRACK": "True",
        "ROBUSTDX_ADMIN_TOKEN": TOKEN,
        "ROBUSTDX_MAX_IMAGE_PIXELS": str(MAX_PIXELS),
        "ROBUSTDX_MAX_IMAGE_BYTES": str(MAX_BYTES),
        "ROBUSTDX_MAX_BODY_BYTES": str(4 * MAX_BYTES),
        "ROBUSTDX_ROBUST_SAMPLE_RATE": "1.0",
        "ROBUSTDX_DRIFT_WINDOW": "32",
        "ROBUSTDX_DRIFT_EVERY": "8",
        "ROBUSTDX_CPU": "1",
        "ROBUSTDX_POINTER_POLL_SECONDS": "0",  # reloads here only through /admin/reload (the poller: its own tests)
    }
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with Server(env, log) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def patch_png(seed: int, center: int = 0, shifted: bool = False) -> bytes:
    return stain_patch(seed, shifted, center)


def predict(client: httpx.Client, *images: bytes) -> httpx.Response:
    return client.post("/predict", files=[("images", (f"p{i}.png", b, "image/png")) for i, b in enumerate(images)])


def assert_4xx_json(r: httpx.Response, *codes: int) -> dict:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if codes:
        assert r.status_code in codes, (r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    return body


def scrape(client: httpx.Client) -> dict[str, float]:
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("robustdx_") and "_bucket" not in line:
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# ------------------------------------------------------------------------------------------------
# endpoints
# ------------------------------------------------------------------------------------------------
def test_predict_one_and_a_batch(client: httpx.Client, store: dict[str, str]) -> None:
    card = client.get("/model").json()
    r = predict(client, patch_png(1))
    assert r.status_code == 200, r.text
    (p,) = r.json()
    assert set(p["probabilities"]) == {"normal", "tumor"}
    assert abs(sum(p["probabilities"].values()) - 1) < 1e-5
    assert p["label"] in p["probabilities"] and p["model_version"] == card["version"]
    assert 0 <= p["margin"] <= 1 and p["decision"] in (p["label"], "refer to clinician")
    assert p["refer_to_clinician"] == (p["confidence"] < card["confidence_threshold"])
    r = predict(client, patch_png(2), patch_png(3), patch_png(4))
    assert r.status_code == 200 and len(r.json()) == 3


def test_explain_returns_ig_and_attacked_copy(client: httpx.Client, tmp_path: Path) -> None:
    files = {"image": ("x.png", patch_png(5), "image/png")}
    r = client.post(
        "/explain", files=files, data={"attack_eps": "0.0314", "attack_steps": "3", "map_size": "8", "baseline": "blur"}
    )
    assert r.status_code == 200, r.text
    e = r.json()
    heat = Image.open(io.BytesIO(base64.b64decode(e["attribution"]["heatmap_png_base64"])))
    assert heat.format == "PNG" and heat.size == (16, 16)  # model resolution of the tiny bundle
    assert np.array(e["attribution"]["attribution"]).shape == (8, 8)
    assert e["attribution"]["baseline"] == "blur" and np.isfinite(e["attribution"]["convergence_delta"])
    assert e["attack"]["eps"] == pytest.approx(0.0314) and e["attack"]["prediction"]["label"] in ("normal", "tumor")
    assert np.array(e["attack"]["attribution"]["attribution"]).shape == (8, 8)
    plain = client.post("/explain", files=files).json()
    assert plain["attack"] is None and plain["attribution"]["baseline"] == "black"


def test_model_card_health_and_openapi(client: httpx.Client, store: dict[str, str]) -> None:
    card = client.get("/model").json()
    assert card["tag"] == store["a"] and len(card["version"]) == 12
    assert card["regime"] == "adv_supcon_ft" and card["data_card"]["classes"] == ["normal", "tumor"]
    assert {"validation", "test", "robust"} <= set(card["metrics"]) and "robust_acc" in card["metrics"]["robust"]
    assert card["bundle_hash"]["weights_sha256"].startswith(card["version"])
    for path in ("/livez", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200
    spec = client.get("/docs.json").json()
    assert {"/predict", "/explain", "/admin/reload"} <= set(spec["paths"])
    assert "get" in spec["paths"]["/model"] and "get" in spec["paths"]["/model/card"]  # documented beside the APIs
    assert "serving_eps" in json.dumps(spec["paths"]["/model"]) + json.dumps(spec["components"])
    assert "examples" in json.dumps(spec["components"])
    md = client.get("/model/card")
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert md.text.startswith("# Model card: robustdx `adv_supcon_ft`") and f"`{card['version']}`" in md.text
    assert "## Do not use" in md.text and "| class | clean recall | robust recall |" in md.text


def test_the_bentoml_client_of_the_readme_works(server: Server, tmp_path: Path) -> None:
    """The README's ``bentoml.SyncHTTPClient`` example, as written there."""
    import bentoml

    image = tmp_path / "patch.png"
    image.write_bytes(patch_png(11))
    with bentoml.SyncHTTPClient(server.url) as client:
        (pred,) = client.predict(images=[image])
        explained = client.explain(image=image, attack_eps=4 / 255, attack_steps=3, map_size=8)
    assert pred["label"] in ("normal", "tumor") and set(pred["probabilities"]) == {"normal", "tumor"}
    assert explained["prediction"]["label"] == pred["label"] and len(explained["attribution"]["attribution"]) == 8
    assert explained["attack"]["eps"] == pytest.approx(4 / 255)


def test_robustdx_serve_starts_the_pinned_model(store: dict[str, str], tmp_path: Path) -> None:
    """``robustdx serve --tag`` as a user runs it (own home: servers sharing one share their metrics)."""
    import shutil
    import signal
    import subprocess
    import sys

    from robustdx.core.util import free_port

    home = tmp_path / "bentoml"
    for part in ("models", "robustdx"):  # the store and the pointer, not the running server's files
        shutil.copytree(Path(store["home"]) / part, home / part)
    port = free_port()
    cmd = [sys.executable, "-m", "robustdx.cli", "serve", "--home", str(home), "--tag", store["b"], "--port", str(port)]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "ROBUSTDX_POINTER_POLL_SECONDS": "0"}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 120, "robustdx serve")
        card = httpx.get(f"http://127.0.0.1:{port}/model", timeout=10).json()
        assert card["tag"] == store["b"] and card["pinned_by_env"] == store["b"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    assert f"serving {store['b']}" in (tmp_path / "serve.log").read_text()


# ------------------------------------------------------------------------------------------------
# 4xx contract
# ------------------------------------------------------------------------------------------------
def _png16() -> bytes:
    return png_bytes((np.linspace(0, 65535, 48 * 48).reshape(48, 48)).astype(np.uint16))


ACCEPTED = {
    "greyscale": lambda: png_bytes(np.full((40, 40), 120, np.uint8)),
    "rgba": lambda: png_bytes(np.full((40, 40, 4), 200, np.uint8)),
    "16-bit": _png16,
    "palette": lambda: (lambda im: (lambda b: (im.save(b, format="PNG"), b.getvalue())[1])(io.BytesIO()))(
        Image.fromarray(np.full((30, 30, 3), 90, np.uint8)).convert("P")
    ),
    "jpeg": lambda: png_bytes(np.full((40, 40, 3), 180, np.uint8), fmt="JPEG"),
}


@pytest.mark.parametrize("kind", sorted(ACCEPTED))
def test_other_modes_are_converted(client: httpx.Client, kind: str) -> None:
    r = predict(client, ACCEPTED[kind]())
    assert r.status_code == 200, (kind, r.text)


def _bad_cases() -> dict[str, tuple[dict, tuple[int, ...], str]]:
    good = patch_png(7)
    tiff = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.float32), mode="F").save(tiff, format="TIFF")
    return {
        "not an image": ({"files": {"images": ("a.png", b"hello, world", "image/png")}}, (400,), "not a PNG or JPEG"),
        "truncated": ({"files": {"images": ("a.png", good[: len(good) // 2], "image/png")}}, (400,), "truncated"),
        "0-byte file": ({"files": {"images": ("a.png", b"", "image/png")}}, (400,), ""),
        "0-byte body": ({"content": b""}, (400,), "images"),
        "too many pixels": (
            {"files": {"images": ("a.png", png_bytes(np.zeros((300, 300), np.uint8)), "image/png")}},
            (400, 413),
            "too large",
        ),
        "body too large": (
            {"files": {"images": ("a.png", b"\x89PNG" + b"0" * (5 * MAX_BYTES), "image/png")}},
            (413,),
            "too large",
        ),
        "tiff": ({"files": {"images": ("a.tif", tiff.getvalue(), "image/tiff")}}, (400,), ""),
        "pdf part": ({"files": {"images": ("a.pdf", good, "application/pdf")}}, (400,), "content type"),
        "text/plain body": ({"content": good, "headers": {"content-type": "text/plain"}}, (415,), "content type"),
        "pickle body": ({"content": b"\x80\x04N.", "headers": {"content-type": "application/vnd.bentoml+pickle"}}, (415,), ""),
        "bad json": ({"content": b'{"images": [', "headers": {"content-type": "application/json"}}, (400,), "JSON"),
        "json list": ({"json": [1, 2]}, (400,), "object"),
        "json string as file": ({"json": {"images": ["iVBORw0KGgo="]}}, (400,), ""),
        "url in file field": (
            {"data": {"images": "http://127.0.0.1:9/x.png"}, "files": {"other": ("o", b"x")}},
            (400,),
            "file upload",
        ),
        "broken multipart": (
            {
                "content": b'--zzz\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\nabc',
                "headers": {"content-type": "multipart/form-data; boundary=zzz"},
            },
            (400,),
            "",
        ),
        "too many images": ({"files": [("images", (f"{i}.png", good, "image/png")) for i in range(17)]}, (400, 413), ""),
    }


@pytest.mark.parametrize("case", sorted(_bad_cases()))
def test_bad_predict_input_is_4xx_json(client: httpx.Client, case: str) -> None:
    kwargs, codes, words = _bad_cases()[case]
    body = assert_4xx_json(client.post("/predict", **kwargs), *codes)
    assert words.lower() in body["error"].lower(), body


@pytest.mark.parametrize(
    "options",
    [
        {"attack_eps": "1.0"},
        {"attack_eps": "-0.01"},
        {"attack_eps": "abc"},
        {"map_size": "0"},
        {"baseline": "zeros"},
        {"attack_steps": "1000"},
        {"attack_steps": "21"},  # the default caps: 20 PGD steps, 64 px maps, 16/255
        {"map_size": "65"},
        {"attack_eps": "0.07"},
    ],
)
def test_out_of_range_explain_options_are_400(client: httpx.Client, options: dict) -> None:
    body = assert_4xx_json(client.post("/explain", files={"image": ("x.png", patch_png(8), "image/png")}, data=options), 400)
    assert next(iter(options)) in body["error"]


def test_wrong_method_is_405(client: httpx.Client) -> None:
    assert_4xx_json(client.get("/predict"), 405)


# ------------------------------------------------------------------------------------------------
# fuzz: >= 1,000 malformed requests, zero 5xx, still healthy
# ------------------------------------------------------------------------------------------------
def test_fuzz_malformed_requests_never_5xx(server: Server, client: httpx.Client) -> None:
    cases = fuzz_requests(1040, patch_png(11))
    local = threading.local()

    def send(case: dict) -> int:
        if not hasattr(local, "c"):
            local.c = httpx.Client(base_url=server.url, timeout=60)
        case = dict(case)
        return local.c.post(case.pop("path"), **case).status_code

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(send, cases))
    assert len(codes) >= 1000
    assert all(c < 500 for c in codes), f"5xx answers: {[c for c in codes if c >= 500][:10]}\n{server.tail()}"
    assert sum(400 <= c < 500 for c in codes) > 900
    assert client.get("/readyz").status_code == 200 and predict(client, patch_png(12)).status_code == 200


# ------------------------------------------------------------------------------------------------
# monitoring: drift and robustness metrics move under a stain-shifted stream
# ------------------------------------------------------------------------------------------------
def _stream(client: httpx.Client, shifted: bool, n: int, start: int) -> None:
    for i in range(start, start + n, 4):
        centers = (0, 3, 4)
        imgs = [patch_png(j, center=centers[j % 3], shifted=shifted) for j in range(i, i + 4)]
        assert predict(client, *imgs).status_code == 200


def _settled(client: httpx.Client, runs_before: int, timeout: float = 90) -> dict[str, float]:
    """Wait until the background monitor has processed everything sent (and run drift again)."""

    def done() -> bool:
        mon = client.get("/model").json()["monitor"]
        return mon["idle"] and mon["drift_runs"] > runs_before

    try:
        wait_until(done, timeout, "the monitor to settle")
    except TimeoutError as err:
        raise AssertionError(f"monitor did not settle: {client.get('/model').json()['monitor']}") from err
    return scrape(client)


def test_drift_and_robustness_metrics_move_under_stain_shift(client: httpx.Client) -> None:
    files = {"image": ("x.png", patch_png(5), "image/png")}
    assert client.post("/explain", files=files).status_code == 200  # IG delta histogram
    runs = client.get("/model").json()["monitor"]["drift_runs"]
    _stream(client, shifted=False, n=48, start=1000)
    clean = _settled(client, runs)
    runs = client.get("/model").json()["monitor"]["drift_runs"]
    _stream(client, shifted=True, n=48, start=2000)
    shifted = _settled(client, runs)
    names = client.get("/metrics").text
    for name, (kind, _, _) in METRICS.items():
        assert (name + ("_total" if kind == "counter" else "")) in names, name
    assert shifted["robustdx_drift_mmd"] > clean["robustdx_drift_mmd"], (clean, shifted)
    assert shifted["robustdx_drift_mmd_p_value"] <= 0.05 < clean["robustdx_drift_mmd_p_value"] or (
        shifted["robustdx_drift_mmd_p_value"] < clean["robustdx_drift_mmd_p_value"]
    ), (clean, shifted)
    assert shifted["robustdx_drift_psi"] != clean["robustdx_drift_psi"]
    assert shifted["robustdx_drift_ks_statistic"] != clean["robustdx_drift_ks_statistic"]
    assert shifted["robustdx_robust_margin"] != clean["robustdx_robust_margin"]
    assert shifted["robustdx_robustness_samples_total"] > clean["robustdx_robustness_samples_total"]
    assert 0.0 <= shifted["robustdx_adversarial_flip_ratio"] <= 1.0
    served = sum(v for k, v in shifted.items() if k.startswith("robustdx_predictions_total"))
    assert served >= 96


# ------------------------------------------------------------------------------------------------
# hot reload
# ------------------------------------------------------------------------------------------------
def test_reload_requires_token(client: httpx.Client) -> None:
    assert_4xx_json(client.post("/admin/reload"), 401)
    assert_4xx_json(client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}), 401)
    assert_4xx_json(client.post("/admin/reload", headers={"Authorization": TOKEN}), 401)


def test_reload_under_load_then_refuse_tampered_bundle(server: Server, client: httpx.Client, store: dict[str, str]) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    v_a = client.get("/model").json()["version"]
    stop, results, lock = threading.Event(), [], threading.Lock()

    def hammer(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            i = 0
            while not stop.is_set():
                r = predict(c, patch_png(3000 + 100 * k + i % 50))
                with lock:
                    results.append((r.status_code, r.json()[0]["model_version"] if r.status_code == 200 else r.text))
                i += 1

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        write_production(store["home"], store["b"])
        r = client.post("/admin/reload", headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["reloaded"] and r.json()["tag"] == store["b"] and r.json()["previous_tag"] == store["a"]
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    v_b = client.get("/model").json()["version"]
    assert v_b != v_a
    failed = [x for x in results if x[0] != 200]
    assert not failed and len(results) >= 20, failed[:5]
    versions = [v for _, v in results]
    assert set(versions) == {v_a, v_b} and versions.index(v_b) > 0

    write_production(store["home"], store["bad"])
    assert read_production(store["home"]).previous == store["b"]
    body = assert_4xx_json(client.post("/admin/reload", headers=auth), 409)
    assert "SHA-256" in body["error"] and store["b"] in body["error"]
    assert client.get("/model").json()["tag"] == store["b"]
    assert predict(client, patch_png(1)).json()[0]["model_version"] == v_b
    write_production(store["home"], store["b"])


def _served(url: str) -> str:
    return httpx.get(f"{url}/model", timeout=10).json()["tag"]


def test_replicas_follow_the_pointer_and_refuse_weights_it_does_not_name(store: dict[str, str], tmp_path: Path) -> None:
    """A second replica, never called on /admin/reload, converges on a moved pointer by itself; a pointer whose
    weights hash is not the stored bundle's (the store altered after promotion) is refused and the old model kept."""
    from robustdx.core.release.bundle import weights_sha256
    from robustdx.core.release.store import load_bundle_from_store

    home = store["home"]
    sha = {t: weights_sha256(load_bundle_from_store(store[t], home)) for t in ("a", "b")}
    write_production(home, store["a"], sha["a"])
    env = {"BENTOML_HOME": home, "ROBUSTDX_POINTER_POLL_SECONDS": "0.5", "ROBUSTDX_CPU": "1"}
    with Server(env, tmp_path / "replica.log") as replica:
        assert _served(replica.url) == store["a"]
        write_production(home, store["b"], sha["b"])
        wait_until(lambda: _served(replica.url), 30, "the replica to load the moved pointer", ok=lambda t: t == store["b"])
        write_production(home, store["a"], sha["b"])  # tag a, but b's weights hash: not what the store holds for a
        time.sleep(2.5)
        card = httpx.get(f"{replica.url}/model", timeout=10).json()
        assert card["tag"] == store["b"] and card["production_pointer"]["serving_it"] is False
        assert "are not the ones the production pointer names" in replica.tail(20_000)
    write_production(home, store["b"])


def test_a_pinned_tag_is_not_replaced_by_the_pointer(store: dict[str, str], tmp_path: Path) -> None:
    env = {"BENTOML_HOME": store["home"], "ROBUSTDX_MODEL_TAG": store["a"], "ROBUSTDX_ADMIN_TOKEN": TOKEN, "ROBUSTDX_CPU": "1"}
    write_production(store["home"], store["b"])
    with Server(env, tmp_path / "pinned.log") as pinned:
        r = httpx.post(f"{pinned.url}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        body = assert_4xx_json(r, 409)
        assert "pinned to" in body["error"] and "ROBUSTDX_MODEL_TAG" in body["error"]
        assert _served(pinned.url) == store["a"] and httpx.get(f"{pinned.url}/model").json()["pinned_by_env"] == store["a"]


def _explain(url: str, attack: bool = False) -> httpx.Response:
    data = {"attack_eps": "0.0157", "attack_steps": "5"} if attack else {}
    return httpx.post(f"{url}/explain", files={"image": ("x.png", patch_png(3), "image/png")}, data=data, timeout=60)


@pytest.fixture(scope="module")
def heavy_home(camelyon_root: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A BentoML home of its own (its 503s must not reach the main server's metrics, which live in the home)
    serving a ResNet-18 at 96 px (three training steps): an explanation with 512 IG steps takes many seconds."""
    home, runs = tmp_path_factory.mktemp("heavy_home"), tmp_path_factory.mktemp("heavy_runs")
    raw = tiny_raw(
        camelyon_root, runs, name="svc_heavy", recipe="ce", model={"arch": "resnet18", "proj_dim": 16, "head_hidden": 16}
    )
    raw["data"]["image_size"] = 96
    raw["finetune"] = {"epochs": 1, "lr": 0.003, "max_steps_per_epoch": 3}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", str(home))
        from robustdx.core.release.store import save_bundle_to_store

        write_production(home, save_bundle_to_store(run_recipe(parse_config(raw)).bundle, home))
    return str(home)


def test_explain_never_holds_predict_and_stops_at_its_deadline(heavy_home: str, tmp_path: Path) -> None:
    """An explanation that would compute for many seconds (ResNet-18, 512 IG steps): /predict and /livez
    answer while it runs, a second explanation is refused at once (429), the first is stopped at its 2 s
    deadline (503, not the request timeout) and its thread is free for the next one; attacked-copy
    explanations are rate-limited per client."""
    env = {
        "BENTOML_HOME": heavy_home,
        "ROBUSTDX_CPU": "1",
        "ROBUSTDX_IG_STEPS": "512",
        "ROBUSTDX_EXPLAIN_DEADLINE_SECONDS": "2",
        "ROBUSTDX_EXPLAIN_QUEUE": "0",
        "ROBUSTDX_EXPLAIN_ATTACKS_PER_MINUTE": "1",
    }
    with Server(env, tmp_path / "explain.log") as srv, ThreadPoolExecutor(2) as pool:
        t0 = time.perf_counter()
        slow = pool.submit(_explain, srv.url)
        time.sleep(0.8)
        for _ in range(3):
            t = time.perf_counter()
            assert httpx.get(f"{srv.url}/livez", timeout=10).status_code == 200
            r = httpx.post(f"{srv.url}/predict", files=[("images", ("p.png", patch_png(1), "image/png"))], timeout=30)
            assert r.status_code == 200 and time.perf_counter() - t < 2.0, (r.status_code, time.perf_counter() - t)
        t = time.perf_counter()
        busy = assert_4xx_json(_explain(srv.url), 429)
        assert "already running" in busy["error"] and time.perf_counter() - t < 2.0
        r = slow.result(timeout=60)
        assert r.status_code == 503 and "deadline of 2 s" in r.json()["error"], r.text[:300]
        assert time.perf_counter() - t0 < 15, "stopped at its deadline, not at the request timeout"
        r = _explain(srv.url)  # queue 0: admitted only because the stopped explanation freed its thread
        assert r.status_code == 503 and "deadline" in r.json()["error"]
        # attacked copies: burst 2, then 1 a minute for this client
        codes = [_explain(srv.url, attack=True) for _ in range(3)]
        assert [c.status_code for c in codes[:2]] == [503, 503]
        limited = assert_4xx_json(codes[2], 429)
        assert "a minute per client" in limited["error"] and codes[2].headers["retry-after"]


def test_no_5xx_was_ever_served(client: httpx.Client) -> None:
    lines = [ln for ln in client.get("/metrics").text.splitlines() if ln.startswith("bentoml_service_request_total")]
    errors = [ln for ln in lines if re.search(r'http_response_code="5\d\d"', ln) and float(ln.rsplit(" ", 1)[1]) > 0]
    assert lines and not errors, errors


# ------------------------------------------------------------------------------------------------
# start-up failures: the service refuses to start and says why (the pointer itself: tests/unit/core/release)
# ------------------------------------------------------------------------------------------------
def _startup_error(tmp_path: Path, **env: str) -> str:
    env = {"BENTOML_HOME": str(tmp_path / "empty_home"), "BENTOML_DO_NOT_TRACK": "True", **env}
    with pytest.raises((RuntimeError, TimeoutError)) as err:
        with Server(env, tmp_path / "serve.log", timeout=90):
            pass
    return str(err.value)


def test_service_without_a_promoted_model_fails_at_startup_clearly(tmp_path: Path) -> None:
    message = _startup_error(tmp_path, ROBUSTDX_MODEL_TAG="")
    assert "no model to serve" in message and "ROBUSTDX_MODEL_TAG" in message


def test_a_bad_setting_fails_at_startup_naming_the_variable(tmp_path: Path) -> None:
    message = _startup_error(tmp_path, ROBUSTDX_MAX_BATCH_SIZE="abc")
    assert "ROBUSTDX_MAX_BATCH_SIZE='abc'" in message and "valid integer" in message
