"""The inference log and clinician feedback on a real ``bentoml serve``: request ids, opt-in image storage,
``POST /feedback`` with its 4xx contract and idempotence, concurrent answers, ``GET /feedback/stats``, the
metrics, and a service that keeps serving when its database is down."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from robustdx.core.config import parse_config
from robustdx.core.feedback.images import ImageStore
from robustdx.core.feedback.store import FeedbackStore, sqlite_url
from robustdx.core.release.pointer import write_production
from robustdx.core.training.recipes import run_recipe
from robustdx.core.util import free_port, wait_until
from tests.deploy.stack import stain_patch
from tests.integration.service_harness import Server
from tests.support.configs import tiny_raw

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLINICIAN = "clinician-token-9c2a"
ADMIN = "admin-token-1b7d"


@pytest.fixture(scope="module")
def home(camelyon_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("feedback_home")
    with pytest.MonkeyPatch.context() as mp:  # BentoML reads its home once per process: never the user's ~/bentoml
        mp.setenv("BENTOML_HOME", str(home))
        from robustdx.core.release.store import save_bundle_to_store

        result = run_recipe(parse_config(tiny_raw(camelyon_root, tmp_path_factory.mktemp("runs"), name="fb")))
        write_production(home, save_bundle_to_store(result.bundle, home))
    return home


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "ROBUSTDX_CLINICIAN_TOKEN": CLINICIAN,
        "ROBUSTDX_ADMIN_TOKEN": ADMIN,
        "ROBUSTDX_CPU": "1",
        "ROBUSTDX_POINTER_POLL_SECONDS": "0",
        "ROBUSTDX_ROBUST_SAMPLE_RATE": "0",
        **extra,
    }


@pytest.fixture(scope="module")
def client(home: Path, tmp_path_factory: pytest.TempPathFactory):
    with Server(_env(home), tmp_path_factory.mktemp("serve") / "serve.log") as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            yield c


def predict(client: httpx.Client, *images: bytes, store: bool = False) -> list[dict]:
    files = [("images", (f"p{i}.png", b, "image/png")) for i, b in enumerate(images)]
    r = client.post("/predict", files=files, data={"store_image": "true" if store else "false"})
    assert r.status_code == 200, r.text[:300]
    return r.json()


def answer(client: httpx.Client, token: str | None = CLINICIAN, **body: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/feedback", json=body, headers=headers)


def test_every_prediction_is_logged_and_only_opted_in_images_are_kept(client: httpx.Client, home: Path) -> None:
    images = [stain_patch(i, shifted=False) for i in range(3)]
    plain = predict(client, *images[:2])
    kept = predict(client, images[2], store=True)
    ids = [p["request_id"] for p in plain + kept]
    assert len(set(ids)) == 3 and all(len(i) == 32 for i in ids)
    assert [p["image_stored"] for p in plain + kept] == [False, False, True]

    store = FeedbackStore(sqlite_url(home / "feedback" / "inference.db"))
    wait_until(lambda: all(store.inference(i) is not None for i in ids), 20, "the three rows in the inference log")
    rows = [store.inference(i) for i in ids]
    assert [r.image_sha256 for r in rows] == [hashlib.sha256(b).hexdigest() for b in images]
    assert [r.prediction for r in rows] == [p["label"] for p in plain + kept]
    assert rows[0].model_version == plain[0]["model_version"] and rows[0].probabilities == plain[0]["probabilities"]
    images_dir = ImageStore(home / "feedback" / "images")
    assert images_dir.path_of(rows[0].image_sha256) is None, "not stored without store_image=true"
    assert images_dir.verify(rows[2].image_sha256).read_bytes() == images[2]


def test_feedback_contract(client: httpx.Client) -> None:
    (kept,) = predict(client, stain_patch(10, shifted=True), store=True)
    (plain,) = predict(client, stain_patch(11, shifted=True))
    rid, label = kept["request_id"], kept["label"]
    other = next(c for c in kept["probabilities"] if c != label)

    def refused(r: httpx.Response, status: int, words: str) -> None:
        assert r.status_code == status, (r.status_code, r.text[:300])
        assert words in r.json()["error"], r.json()

    refused(answer(client, None, request_id=rid, label=label, reviewer="dr.a"), 401, "ROBUSTDX_CLINICIAN_TOKEN")
    refused(answer(client, ADMIN, request_id=rid, label=label, reviewer="dr.a"), 401, "wrong bearer token")
    refused(answer(client, request_id="0" * 32, label=label, reviewer="dr.a"), 404, "unknown request_id")
    refused(answer(client, request_id=rid, label="cat", reviewer="dr.a"), 422, "not one of the predicting model's classes")
    refused(answer(client, request_id=rid, label=label, reviewer="dr.a", note="x" * 2001), 422, "at most 2000")
    refused(answer(client, request_id=rid, label=label, reviewer="dr a!"), 422, "reviewer must be")
    refused(answer(client, request_id=plain["request_id"], label=label, reviewer="dr.a"), 409, "store_image=true")
    assert answer(client, request_id=rid, reviewer="dr.a").status_code == 400  # no label: BentoML's own validation

    first = answer(client, request_id=rid, label=other, reviewer="dr.a", note="looks benign")
    assert first.status_code == 200, first.text
    assert first.json() | {"created_at": None} == {
        "request_id": rid, "reviewer": "dr.a", "label": other, "note": "looks benign", "created_at": None,
        "created": True, "agrees_with_prediction": False,
    }  # fmt: skip
    again = answer(client, request_id=rid, label=other, reviewer="dr.a", note="looks benign")
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["created_at"] == first.json()["created_at"]
    refused(answer(client, request_id=rid, label=label, reviewer="dr.a"), 409, "never replaced")

    stats = client.get("/feedback/stats").json()
    assert stats["by_label"].get(other, 0) >= 1 and stats["feedback"] >= 1
    assert stats["by_model_version"][kept["model_version"]]["feedback"] >= 1


def upload(client: httpx.Client, image: bytes, token: str | None = CLINICIAN, **form: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/feedback/image", files=[("image", ("case.png", image, "image/png"))], data=form, headers=headers)


def test_feedback_on_an_uploaded_image(client: httpx.Client, home: Path) -> None:
    image = stain_patch(30, shifted=True)
    sha = hashlib.sha256(image).hexdigest()
    images_dir = ImageStore(home / "feedback" / "images")
    assert images_dir.path_of(sha) is None
    before = client.get("/feedback/stats").json()
    for token, form, status, words in [
        (None, {"label": "tumor", "reviewer": "dr.u"}, 401, "ROBUSTDX_CLINICIAN_TOKEN"),
        (CLINICIAN, {"label": "cat", "reviewer": "dr.u"}, 422, "not one of the predicting model's classes"),
        (CLINICIAN, {"label": "tumor", "reviewer": "dr u!"}, 422, "reviewer must be"),
        (CLINICIAN, {"label": "tumor", "reviewer": "dr.u", "note": "x" * 2001}, 422, "at most 2000"),
    ]:
        r = upload(client, image, token, **form)
        assert r.status_code == status and words in r.json()["error"], (r.status_code, r.text[:300])
    bad = upload(client, b"not an image", label="tumor", reviewer="dr.u")
    assert bad.status_code == 400 and bad.json()["status"] == 400, bad.text[:300]
    now = client.get("/feedback/stats").json()
    assert images_dir.path_of(sha) is None, "a refused upload is not stored"
    assert (now["inferences"], now["feedback"]) == (before["inferences"], before["feedback"]), "refusals wrote nothing"

    first = upload(client, image, label="tumor", reviewer="dr.u", note="archived case")
    assert first.status_code == 200, first.text[:300]
    body = first.json()
    assert body["created"] and body["label"] == "tumor" and len(body["request_id"]) == 32
    store = FeedbackStore(sqlite_url(home / "feedback" / "inference.db"))
    row = store.inference(body["request_id"])
    assert row is not None and row.source == "upload" and row.image_sha256 == sha and row.image_stored
    assert body["agrees_with_prediction"] == (row.prediction == "tumor")
    assert images_dir.verify(sha).read_bytes() == image
    # the same image from the same reviewer: a repeat of that answer (no second row); another label: 409
    again = upload(client, image, label="tumor", reviewer="dr.u", note="archived case")
    assert again.status_code == 200 and again.json()["request_id"] == body["request_id"] and not again.json()["created"]
    assert upload(client, image, label="normal", reviewer="dr.u").status_code == 409
    after = client.get("/feedback/stats").json()
    assert after["inferences"] == before["inferences"] + 1 and after["feedback"] == before["feedback"] + 1
    store.close()


def test_concurrent_answers_for_one_request_all_land(client: httpx.Client) -> None:
    (kept,) = predict(client, stain_patch(20, shifted=False), store=True)
    before = client.get("/feedback/stats").json()["feedback"]
    reviewers = [f"dr.{i}" for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda r: answer(client, request_id=kept["request_id"], label=kept["label"], reviewer=r).status_code,
                reviewers + reviewers,  # every reviewer twice, at once: idempotent, nothing lost, nothing doubled
            )
        )
    assert codes == [200] * 32
    stats = client.get("/feedback/stats").json()
    assert stats["feedback"] == before + 16
    assert 0 < stats["agreement"] <= 1


def test_feedback_metrics(client: httpx.Client) -> None:
    def scrape() -> str:
        return client.get("/metrics").text

    wait_until(lambda: "robustdx_inference_log_up 1.0" in scrape(), 20, "the inference log up")
    text = scrape()
    assert 'robustdx_feedback_total{agrees="true"' in text and 'robustdx_feedback_total{agrees="false"' in text
    written = [ln for ln in text.splitlines() if ln.startswith("robustdx_inference_log_written_total")]
    assert written and float(written[0].split()[-1]) >= 5
    agreement = wait_until(
        lambda: [ln for ln in scrape().splitlines() if ln.startswith("robustdx_feedback_agreement ")], 30, "agreement gauge"
    )
    assert 0 < float(agreement[0].split()[-1]) <= 1


def test_serving_goes_on_while_the_database_is_down(home: Path, tmp_path: Path) -> None:
    down = f"postgresql+psycopg://robustdx:x@127.0.0.1:{free_port()}/robustdx"  # nothing listens there
    with Server(_env(home, ROBUSTDX_INFERENCE_DB_URL=down), tmp_path / "serve.log") as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            (pred,) = predict(c, stain_patch(30, shifted=False), store=True)
            assert pred["request_id"]
            assert "robustdx_inference_log_up 0.0" in c.get("/metrics").text
            r = answer(c, request_id=pred["request_id"], label=pred["label"], reviewer="dr.a")
            assert r.status_code == 503 and "not reachable" in r.json()["error"], r.text
            assert c.get("/feedback/stats").status_code == 503
            assert c.get("/readyz").status_code == 200
