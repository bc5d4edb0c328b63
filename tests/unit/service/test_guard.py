"""EdgeGuard driven directly with a tiny ASGI app: the 4xx answers it gives itself, the body it replays,
and the rewriting of the app's own 4xx answers into one JSON object."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from robustdx.service.guard import EdgeGuard, GuardLimits

pytestmark = pytest.mark.unit

ROUTES = {"/predict": ("images",), "/admin/reload": ()}
PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 64


class Echo:
    """An ASGI app that answers 200 with the body it received (or a fixed 4xx answer)."""

    def __init__(self, status: int = 200, body: bytes | None = None) -> None:
        self.status, self.body, self.calls = status, body, 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.calls += 1
        received = b""
        while True:
            msg = await receive()
            received += msg.get("body", b"")
            if not msg.get("more_body", False):
                break
        out = received if self.body is None else self.body
        await send({"type": "http.response.start", "status": self.status, "headers": [(b"content-length", b"%d" % len(out))]})
        await send({"type": "http.response.body", "body": out, "more_body": False})


def call(
    app: Echo, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, chunk: int = 0
) -> tuple[int, dict[str, str], bytes]:
    """Send one request through EdgeGuard(max_body=1000); ``chunk`` > 0 streams the body without a length."""
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    if not chunk:
        hdrs.setdefault("content-length", str(len(body)))
    parts = [body[i : i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(msg: dict) -> None:
        sent.append(msg)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.encode(), v.encode()) for k, v in hdrs.items()],
        "query_string": b"",
    }
    asyncio.run(EdgeGuard(app, ROUTES, GuardLimits(max_body=1000))(scope, receive, send))
    start, *bodies = sent
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, b"".join(b["body"] for b in bodies)


def multipart(**files: tuple[str, bytes, str] | str) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body (file parts as (name, bytes, type), text parts as str) and its headers."""
    req = httpx.Request(
        "POST",
        "http://x/predict",
        files={k: v for k, v in files.items() if isinstance(v, tuple)},
        data={k: v for k, v in files.items() if isinstance(v, str)},
    )
    return req.read(), {"content-type": req.headers["content-type"]}


def error(status: int, headers: dict[str, str], body: bytes, code: int) -> str:
    """The JSON error shape: one object with the problem and the status."""
    assert status == code, body
    assert headers["content-type"] == "application/json" and int(headers["content-length"]) == len(body)
    payload = json.loads(body)
    assert payload["status"] == code and isinstance(payload["error"], str) and payload["error"]
    return payload["error"]


def test_get_on_an_api_route_is_405() -> None:
    app = Echo()
    assert "use POST" in error(*call(app, "GET", "/predict"), 405) and app.calls == 0


def test_other_paths_pass_untouched() -> None:
    app = Echo(status=404, body=b"not json")
    status, _, body = call(app, "GET", "/metrics")
    assert (status, body, app.calls) == (404, b"not json", 1)


@pytest.mark.parametrize("chunk", [0, 100])  # a declared Content-Length, and a streamed body without one
def test_too_large_body_is_413(chunk: int) -> None:
    app = Echo()
    body, headers = multipart(images=("a.png", PNG * 20, "image/png"))
    assert "too large" in error(*call(app, "POST", "/predict", body, headers, chunk=chunk), 413) and app.calls == 0


def test_invalid_content_length_is_400() -> None:
    assert "Content-Length" in error(*call(Echo(), "POST", "/predict", b"{}", {"content-length": "1e3"}), 400)


def test_unknown_content_type_is_415_naming_the_file_fields() -> None:
    message = error(*call(Echo(), "POST", "/predict", PNG, {"content-type": "text/plain"}), 415)
    assert "text/plain" in message and "images" in message


@pytest.mark.parametrize(
    "body",
    [
        b"--zzz\r\nContent-Type: image/png\r\n\r\nabc\r\n--zzz--\r\n",  # a part without a name
        b"--zzz\r\nno colon here\r\n\r\nabc\r\n--zzz--\r\n",  # a broken part header
        b"hello world",  # no boundary at all
    ],
)
def test_malformed_multipart_is_400(body: bytes) -> None:
    app = Echo()
    message = error(*call(app, "POST", "/predict", body, {"content-type": "multipart/form-data; boundary=zzz"}), 400)
    assert "malformed multipart/form-data" in message and app.calls == 0


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({"other": ("o.png", PNG, "image/png")}, "unexpected file field 'other'"),
        ({"images": "http://127.0.0.1:9/x.png", "other": ("o", b"x", "text/plain")}, "must be a file upload"),
        ({"images": ("x" * 300, PNG, "image/png")}, "file name too long"),
    ],
)
def test_bad_file_fields_are_400(files: dict, words: str) -> None:
    body, headers = multipart(**files)
    assert words in error(*call(Echo(), "POST", "/predict", body, headers), 400)


@pytest.mark.parametrize(("body", "words"), [(b'{"images": [', "malformed JSON"), (b"[1, 2]", "must be an object")])
def test_bad_json_is_400(body: bytes, words: str) -> None:
    assert words in error(*call(Echo(), "POST", "/admin/reload", body, {"content-type": "application/json"}), 400)


def test_a_valid_multipart_body_is_replayed_intact() -> None:
    app = Echo()
    body, headers = multipart(images=("a.png", PNG, "image/png"))
    status, _, echoed = call(app, "POST", "/predict", body, headers, chunk=50)
    assert (status, echoed, app.calls) == (200, body, 1)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ([{"error": "bad thing"}], "bad thing"),  # BentoML's list shape
        (
            {"error": "1 validation error", "detail": [{"loc": ["images", 0], "msg": "not a PNG"}]},
            "invalid input: images.0: not a PNG",
        ),
    ],
)
def test_the_apps_4xx_answers_become_one_json_object(payload: Any, expected: str) -> None:
    app = Echo(status=422, body=json.dumps(payload).encode())
    body, headers = multipart(images=("a.png", PNG, "image/png"))
    assert error(*call(app, "POST", "/predict", body, headers), 422) == expected


def test_a_non_json_4xx_answer_is_wrapped() -> None:
    app = Echo(status=400, body=b"plain text problem")
    assert error(*call(app, "POST", "/admin/reload", b"", {"content-type": "application/json"}), 400) == "plain text problem"


# ------------------------------------------------------------------------------------- slow and greedy clients
def _scope(client: str = "10.0.0.1") -> dict:
    return {"type": "http", "method": "POST", "path": "/predict", "client": (client, 5000), "query_string": b"",
            "headers": [(b"content-type", b"application/json")]}  # fmt: skip


def test_a_body_that_never_arrives_is_answered_408() -> None:
    sent: list[dict] = []

    async def receive() -> dict:
        await asyncio.sleep(3600)  # a client that sent its headers and nothing else
        return {"type": "http.disconnect"}

    async def send(msg: dict) -> None:
        sent.append(msg)

    guard = EdgeGuard(Echo(), ROUTES, GuardLimits(max_body=1000, body_timeout=0.2))
    asyncio.run(asyncio.wait_for(guard(_scope(), receive, send), timeout=5))
    assert sent[0]["status"] == 408 and b"not received within 0.2 s" in sent[1]["body"]
    assert not guard._in_flight  # the slot is given back


def test_one_client_cannot_take_every_slot() -> None:
    async def scenario() -> list[int]:
        gate = asyncio.Event()
        statuses: list[int] = []

        async def slow_receive() -> dict:
            await gate.wait()
            return {"type": "http.request", "body": b"{}", "more_body": False}

        def sender() -> Callable[[dict], Awaitable[None]]:
            async def send(msg: dict) -> None:
                if msg["type"] == "http.response.start":
                    statuses.append(msg["status"])

            return send

        guard = EdgeGuard(Echo(), ROUTES, GuardLimits(max_body=1000, per_client=2))
        held = [asyncio.create_task(guard(_scope(), slow_receive, sender())) for _ in range(2)]
        await asyncio.sleep(0.05)
        await guard(_scope(), slow_receive, sender())  # a third from the same address: refused at once
        other = asyncio.create_task(guard(_scope("10.0.0.2"), slow_receive, sender()))  # another address: admitted
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(*held, other)
        return statuses

    statuses = asyncio.run(scenario())
    assert statuses[0] == 429 and sorted(statuses[1:]) == [200, 200, 200]
