"""The admin token of a service reload goes only to allowed hosts, and never follows a redirect."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from robustdx.flows.release import reload_service, service_hosts

pytestmark = pytest.mark.unit


class Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []
    redirect_to: str | None = None

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        Recorder.seen.append((self.path, self.headers.get("Authorization")))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if Recorder.redirect_to:
            self.send_response(307)
            self.send_header("Location", Recorder.redirect_to)
            self.end_headers()
            return
        body = json.dumps({"reloaded": True, "tag": "robustdx-classifier:x"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.seen, Recorder.redirect_to = [], None
    httpd = HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_the_token_reaches_an_allowed_host(server: str) -> None:
    out = reload_service(server, token="t0k")
    assert out["tag"] == "robustdx-classifier:x" and Recorder.seen == [("/admin/reload", "Bearer t0k")]


def test_a_redirect_is_not_followed(server: str) -> None:
    Recorder.redirect_to = f"{server}/elsewhere"
    with pytest.raises(RuntimeError, match="redirect.*not followed"):
        reload_service(server, token="t0k")
    assert [path for path, _ in Recorder.seen] == ["/admin/reload"]  # the redirect target never got the token


def test_other_hosts_never_get_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="refusing to send the admin token to 'attacker.example'"):
        reload_service("http://attacker.example:3000", token="t0k")
    monkeypatch.setenv("ROBUSTDX_SERVICE_HOSTS", "service, 127.0.0.1")
    assert service_hosts() == {"service", "127.0.0.1"}
    with pytest.raises(RuntimeError, match="refusing"):
        reload_service("http://localhost:3000", token="t0k")
