"""An ASGI middleware in front of the API routes that makes the 4xx contract hold.

Why it exists (BentoML 1.4.40 behaviour, read in ``_bentoml_impl/server/app.py`` and ``serde.py``):

* a malformed multipart body makes Starlette raise ``HTTPException(400)`` inside BentoML's handler,
  which BentoML's catch-all turns into a **500**; so does an upload whose file name is too long for
  a temporary file, and a URL string in a file field (which BentoML would also try to *download*);
* BentoML answers its own 4xx exceptions with a JSON *list* (``[{"error": ...}]``) and pydantic
  validation errors with ``{"error": "1 validation error for ...", "detail": [...]}``, where the
  problem is only in ``detail``.

So, for ``POST`` to the API routes, the middleware buffers the body (refusing more than
``max_body`` bytes with 413), refuses unsupported content types (415), malformed JSON and malformed
multipart (400), file fields that are not file uploads (400), then replays the body to BentoML.
Every 4xx answer from the routes is rewritten to one JSON object ``{"error": "<what is wrong>",
"status": <code>}`` (plus ``detail`` where pydantic gave one).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPES = ("application/json", "")
MULTIPART = "multipart/form-data"
MAX_FILENAME = 200


def _json_response(status: int, error: str, **extra: Any) -> tuple[Message, Message]:
    body = json.dumps({"error": error, "status": status, **extra}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    return start, {"type": "http.response.body", "body": body, "more_body": False}


def _explain(payload: Any, status: int) -> dict[str, Any]:
    """One JSON object naming the problem, from whatever BentoML produced."""
    if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], dict):
        payload = payload[0]
    if not isinstance(payload, dict):
        return {"error": str(payload), "status": status}
    out = dict(payload)
    detail = out.get("detail")
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        parts = []
        for d in detail:
            loc = ".".join(str(x) for x in d.get("loc", ()))
            parts.append(f"{loc}: {d.get('msg', '')}" if loc else str(d.get("msg", "")))
        out["error"] = "invalid input: " + "; ".join(parts)
    out.setdefault("error", "bad request")
    out["status"] = status
    return out


@dataclass(frozen=True)
class GuardLimits:
    """What one request may take: body size, time to send it, requests in flight per client address."""

    max_body: int
    body_timeout: float = 10.0
    per_client: int = 8


class _TooLarge(Exception):
    """The body passed the size limit while it was read."""


class EdgeGuard:
    """See the module docstring. ``routes`` maps an API path to the names of its file fields.

    Besides the 4xx contract it keeps slow or greedy clients from exhausting the service's concurrency: a body
    that does not arrive within ``limits.body_timeout`` seconds is answered 408 (a socket that sends only headers
    would otherwise hold a slot until the request timeout), and one client address may have at most
    ``limits.per_client`` requests in flight on these routes (429 beyond: one client cannot take every slot).
    """

    def __init__(self, app: Callable[..., Awaitable[None]], routes: dict[str, tuple[str, ...]], limits: GuardLimits) -> None:
        self.app = app
        self.routes = routes
        self.limits = limits
        self.max_body = int(limits.max_body)
        self._in_flight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.routes:
            await self.app(scope, receive, send)
            return
        client = str((scope.get("client") or ("?",))[0])
        if self._in_flight[client] >= self.limits.per_client:
            busy = f"too many requests in flight from {client} (at most {self.limits.per_client}); retry when one has finished"
            await self._send(send, *_json_response(429, busy))
            return
        self._in_flight[client] += 1
        try:
            await self._guarded(scope, receive, send)
        finally:
            self._in_flight[client] -= 1
            if self._in_flight[client] <= 0:
                del self._in_flight[client]

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":
            await self._send(send, *_json_response(405, f"{scope.get('method')} not allowed on {scope['path']}: use POST"))
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                await self._send(send, *_json_response(400, f"invalid Content-Length header {length!r}"))
                return
            if int(length) > self.max_body:
                await self._send(send, *_json_response(413, f"request body too large: {length} bytes > limit {self.max_body}"))
                return
        try:
            chunks = await asyncio.wait_for(self._read_body(receive), timeout=self.limits.body_timeout)
        except TimeoutError:
            await self._send(send, *_json_response(408, f"request body not received within {self.limits.body_timeout:g} s"))
            return
        except _TooLarge:
            await self._send(send, *_json_response(413, f"request body too large: more than {self.max_body} bytes"))
            return
        if chunks is None:  # the client went away
            return
        body = b"".join(chunks)
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        problem = await self._check(scope, body, ctype, self.routes[scope["path"]])
        if problem is not None:
            await self._send(send, *problem)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, self._normalising(send))

    async def _read_body(self, receive: Receive) -> list[bytes] | None:
        """The body's chunks (None when the client disconnects); raises :class:`_TooLarge` past ``max_body``."""
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _TooLarge
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return chunks

    async def _check(self, scope: Scope, body: bytes, ctype: str, file_fields: tuple[str, ...]) -> tuple[Message, Message] | None:
        if ctype in JSON_TYPES:
            if not body.strip():
                return None
            try:
                obj = json.loads(body)
            except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
                return _json_response(400, f"malformed JSON body: {str(err)[:200] or type(err).__name__}")
            if not isinstance(obj, dict):
                return _json_response(400, f"JSON body must be an object, got {type(obj).__name__}")
            return None
        if ctype == MULTIPART:
            return await self._check_multipart(scope, body, file_fields)
        return _json_response(
            415,
            f"unsupported content type {ctype!r}: send multipart/form-data"
            + (f" with file field(s) {', '.join(file_fields)}" if file_fields else "")
            + " or application/json",
        )

    async def _check_multipart(self, scope: Scope, body: bytes, file_fields: tuple[str, ...]) -> tuple[Message, Message] | None:
        from starlette.datastructures import UploadFile
        from starlette.requests import Request

        sent = False

        async def once() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        request = Request({k: v for k, v in scope.items() if k != "app"}, once)
        try:
            form = await request.form()
        except Exception as err:  # MultiPartException and parser errors: the client's malformed body
            return _json_response(400, f"malformed multipart/form-data body: {getattr(err, 'message', None) or err}")
        try:
            for key, value in form.multi_items():
                if key not in file_fields and isinstance(value, UploadFile):
                    # BentoML json-decodes unknown file parts as UTF-8 text and 500s on binary ones
                    expected = f"file field(s): {', '.join(file_fields)}" if file_fields else "no file fields"
                    return _json_response(400, f"unexpected file field {key!r}: this endpoint takes {expected}")
                if key in file_fields:
                    if not isinstance(value, UploadFile):
                        return _json_response(400, f"field {key!r} must be a file upload (PNG/JPEG), got a text value")
                    if value.filename is not None and (len(value.filename) > MAX_FILENAME or "\x00" in value.filename):
                        return _json_response(400, f"field {key!r}: file name too long or invalid (max {MAX_FILENAME} chars)")
        finally:
            await form.close()
        return None

    def _normalising(self, send: Send) -> Send:
        state: dict[str, Any] = {"start": None, "chunks": []}

        async def wrapped(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                if 400 <= msg["status"] < 500:
                    state["start"] = msg
                    return
                await send(msg)
                return
            if msg["type"] == "http.response.body" and state["start"] is not None:
                state["chunks"].append(msg.get("body", b""))
                if msg.get("more_body", False):
                    return
                start, raw = state["start"], b"".join(state["chunks"])
                try:
                    payload = json.loads(raw) if raw else {"error": "bad request"}
                except (ValueError, RecursionError):
                    payload = {"error": raw.decode("utf-8", "replace")[:500]}
                out = json.dumps(_explain(payload, start["status"])).encode()
                hdrs = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
                hdrs += [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
                await send({**start, "headers": hdrs})
                await send({"type": "http.response.body", "body": out, "more_body": False})
                return
            await send(msg)

        return wrapped

    @staticmethod
    async def _send(send: Send, start: Message, body: Message) -> None:
        await send(start)
        await send(body)
