"""What the bundled nginx answers itself (web/http/proxy.py), without the app: an app that
is not there (502), one that does not answer in time (504), a body over the size limit
(413), an upload past WHISPER_MAX_UPLOADS (503). On API paths each is JSON in the API's
error shape (OpenAI's under /v1/), on pages a page; busy and restarting say when to come
back. nginx runs here as the server runs it, in front of a stand-in for gunicorn."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from server import free_port
from web.http import proxy

UPLOAD = 2_000_000  # bytes: above proxy.UPLOAD_BODY_BYTES, so it counts as an upload


class SilentApp:
    """A stand-in for gunicorn on a unix socket that reads requests and never answers."""

    def __init__(self, path: str):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        self.received = 0  # body bytes read, over every connection
        self.connections: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.received += len(data)

    def close(self) -> None:
        self.listener.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def front():
    """start(app=..., **ProxyConfig fields) -> base URL of nginx in front of a socket that
    is missing ('none') or held by a SilentApp ('silent')."""
    started, apps, folders = [], [], []

    def start(app: str = "none", **overrides) -> str:
        # as gunicorn.conf.py makes it: nginx's workers may run as another user
        folder = Path(tempfile.mkdtemp(prefix="whisper-proxy-test-"))
        folders.append(folder)
        folder.chmod(0o755)
        socket_path = str(folder / proxy.SOCKET_NAME)
        if app == "silent":
            apps.append(SilentApp(socket_path))
            os.chmod(socket_path, 0o777)
        fields = dict(host="127.0.0.1", port=free_port(), upstream_socket=socket_path,
                      folder=str(folder), max_upload_mb=1, read_timeout=60)
        fields.update(overrides)
        nginx = proxy.Proxy(proxy.ProxyConfig(**fields), on_death=lambda code: None)
        nginx.start()
        started.append(nginx)
        base = f"http://127.0.0.1:{fields['port']}"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", fields["port"]), timeout=2).close()
                return base
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.05)

    start.apps = apps
    yield start
    for nginx in started:
        nginx.stop()
    for app in apps:
        app.close()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def native_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    return error


def openai_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def page_error(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("text/html")
    assert '<p class="error" role="alert">' in response.text  # what the upload page shows
    return response.text


def test_an_app_that_is_not_there_is_a_502_in_each_shape(front):
    base = front("none")
    for path in ("/api/v1/jobs/abc", "/healthz", "/readyz", "/invocations", "/metrics"):
        answer = requests.get(base + path, timeout=5)
        error = native_error(answer, 502)
        assert error["code"] == "bad_gateway" and "restarting" in error["message"], path
        assert answer.headers["Retry-After"] == str(proxy.RESTART_RETRY_SECONDS)
    answer = requests.post(base + "/v1/audio/transcriptions", files={"file": ("a.wav", b"x")},
                           timeout=5)
    error = openai_error(answer, 502)
    assert error["type"] == "server_error" and error["code"] == "bad_gateway"
    assert answer.headers["Retry-After"] == str(proxy.RESTART_RETRY_SECONDS)
    text = page_error(requests.get(base + "/jobs", timeout=5), 502)
    assert "try again in" in text


def test_an_app_that_does_not_answer_in_time_is_a_504_in_each_shape(front):
    base = front("silent", read_timeout=1)
    error = native_error(requests.get(base + "/api/v1/jobs/abc", timeout=10), 504)
    assert error["code"] == "gateway_timeout" and "Prefer: respond-async" in error["message"]
    answer = requests.get(base + "/v1/models", timeout=10)
    assert openai_error(answer, 504)["code"] == "gateway_timeout"
    assert answer.headers["x-should-retry"] == "false"  # sending it again waits as long
    page_error(requests.get(base + "/", timeout=10), 504)


def test_a_body_over_the_limit_is_a_413_in_each_shape(front):
    base = front("none", max_upload_mb=1)
    too_large = b"x" * ((1 + proxy.UPLOAD_SLACK_MB) * 1024 * 1024 + 1)
    answer = requests.post(base + "/api/v1/transcriptions", data=too_large, timeout=10)
    error = native_error(answer, 413)
    assert error["code"] == "request_entity_too_large" and "(1 MB)" in error["message"]
    answer = requests.post(base + "/v1/audio/transcriptions", data=too_large, timeout=10)
    assert openai_error(answer, 413)["type"] == "invalid_request_error"
    assert answer.headers["x-should-retry"] == "false"
    page_error(requests.post(base + "/jobs", data=too_large, timeout=10), 413)


def answer_to(port: int, path: str, length: int, body: bytes = b"") -> tuple:
    """(status line and headers, body, seconds) of the answer to a request whose headers
    announce a body of `length` bytes, of which `body` is sent."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-"
                     f"stream\r\nContent-Length: {length}\r\n\r\n".encode() + body)
        raw = b""
        while b"\r\n\r\n" not in raw:
            piece = sock.recv(65536)
            assert piece, raw
            raw += piece
        head, _, answer = raw.partition(b"\r\n\r\n")
        size = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")))
        while len(answer) < size:
            answer += sock.recv(65536)
    return head.decode(), answer.decode(), time.monotonic() - started


def test_an_upload_past_the_limit_is_refused_before_its_body(front):
    base = front("silent", max_uploads=1, read_timeout=5)
    port = int(base.rsplit(":", 1)[1])
    first = threading.Thread(target=lambda: requests.post(
        base + "/api/v1/transcriptions", data=os.urandom(UPLOAD), timeout=30), daemon=True)
    first.start()
    app = front.apps[0]
    deadline = time.monotonic() + 10
    while app.received < UPLOAD:  # nginx took its body in whole and handed it on
        assert time.monotonic() < deadline, "the first upload never reached the app"
        time.sleep(0.05)

    head, body, seconds = answer_to(port, "/api/v1/transcriptions", UPLOAD)
    assert head.startswith("HTTP/1.1 503"), head
    assert seconds < 1.0, seconds  # at once: not one byte of the body was sent
    assert f"Retry-After: {proxy.UPLOADS_RETRY_SECONDS}" in head
    error = json.loads(body)["error"]
    assert error["code"] == "too_many_uploads" and "1 uploads at once" in error["message"]
    head, body, _ = answer_to(port, "/v1/audio/transcriptions", UPLOAD)
    assert head.startswith("HTTP/1.1 503") and json.loads(body)["error"]["type"] == "server_error"
    head, body, _ = answer_to(port, "/jobs", UPLOAD)
    assert head.startswith("HTTP/1.1 503") and 'class="error"' in body
    # a small body is no upload: it goes on to the app (which says nothing: 504 after 5 s)
    head, body, seconds = answer_to(port, "/api/v1/jobs/abc/cancel", 100, b"x" * 100)
    assert head.startswith("HTTP/1.1 504") and seconds > 4, (head, seconds)
    first.join(30)
