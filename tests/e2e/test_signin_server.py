"""Sign-in on the production stack (nginx in front of two gunicorn workers): the client's
address and scheme come through nginx's unix socket, sign-out reaches both workers, wrong
keys meet 429, and no key reaches the log."""

from __future__ import annotations

import re

import pytest
import requests

from server import Server, server_env

KEY = "e2e-key-7c1d"
WRONG = "e2e-guess-0b2e"
FAILURES = 3


@pytest.fixture
def keyed_server(checkpoint, tmp_path):
    env = server_env(checkpoint, tmp_path, WHISPER_DEVICES="cpu,cpu", WHISPER_API_KEYS=KEY,
                     WHISPER_KEY_FAILURES=str(FAILURES), WHISPER_PRELOAD="false")
    server = Server(env, tmp_path / "gunicorn.log").start()
    yield server
    server.stop()


def _token(session: requests.Session, base: str, path: str = "/signin") -> str:
    page = session.get(base + path, headers={"Connection": "close"}).text
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def test_sign_in_through_nginx(keyed_server):
    base = keyed_server.base
    plain = requests.get(base + "/signin").headers["Set-Cookie"]
    assert "SameSite=Lax" in plain and "Secure" not in plain
    # a TLS proxy on this host (loopback: trusted by default) in front of nginx
    https = requests.get(base + "/signin", headers={"X-Forwarded-Proto": "https"})
    assert "; Secure" in https.headers["Set-Cookie"]

    browser = requests.Session()
    signed = browser.post(base + "/signin", data={"csrf_token": _token(browser, base), "key": KEY},
                          allow_redirects=False)
    assert signed.status_code == 303
    copy = {"session": browser.cookies["session"]}
    # Connection: close spreads the requests over both workers
    fresh = [requests.get(base + "/jobs", cookies=copy, allow_redirects=False,
                          headers={"Connection": "close"}).status_code for _ in range(8)]
    assert fresh == [200] * 8
    out = browser.post(base + "/signout", data={"csrf_token": _token(browser, base, "/")},
                       allow_redirects=False)
    assert out.status_code == 303
    after = [requests.get(base + "/jobs", cookies=copy, allow_redirects=False,
                          headers={"Connection": "close"}).status_code for _ in range(8)]
    assert after == [303] * 8

    # the limit is per worker process: with two workers, the (2N+1)-th wrong key is 429
    codes = [requests.get(base + "/api/v1/models", headers={
        "Authorization": f"Bearer {WRONG}", "Connection": "close"}).status_code
        for _ in range(2 * FAILURES + 1)]
    assert codes[:FAILURES] == [401] * FAILURES and 429 in codes
    log = keyed_server.log.read_text()
    assert "wrong API key from 127.0.0.1" in log  # the client's address, not nginx's socket
    assert WRONG not in log and KEY not in log
