"""Sign-in and keys: sign-out revokes copies of the cookie, sessions expire, wrong keys are
rate-limited per client address on every key check, the cookie is SameSite=Lax and Secure
over HTTPS as a trusted proxy tells it (never as a client claims)."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from conftest import FakeClock, make_app
from web.http.auth import LIMITER
from web.http.forwarded import TrustedProxies
from web.http.ratelimit import FailureLimiter, Limit
from web.http.signin import RULES

KEYS = "secret-one,secret-two"
WRONG = "guess-4f9a"  # must never reach the log


@pytest.fixture
def keyed(checkpoint, tmp_path):
    """A factory of apps with API keys, stopped after the test."""
    apps = []

    def build(**config):
        app = make_app(checkpoint, tmp_path / str(len(apps)), WHISPER_API_KEYS=KEYS, **config)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["whisper_jobs"].stop()


def csrf(client, **kwargs) -> str:
    """The form token, from the sign-in page, or the page it sends a signed-in browser to."""
    page = client.get("/signin", follow_redirects=True, **kwargs).get_data(as_text=True)
    return page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


def sign_in(client, key="secret-one", **kwargs):
    return client.post("/signin", data={"csrf_token": csrf(client, **kwargs), "key": key},
                       **kwargs)


def with_clock(app, clock: FakeClock, attempts: int = 3, window: float = 60.0) -> None:
    app.extensions[RULES] = replace(app.extensions[RULES], clock=clock)
    app.extensions[LIMITER] = FailureLimiter(Limit(attempts, window), clock=clock)


# --- revocation and expiry -----------------------------------------------------------------


def test_a_copied_cookie_is_refused_after_sign_out(keyed):
    app = keyed()
    clock = FakeClock(1_000_000.0)
    with_clock(app, clock)
    browser, thief = app.test_client(), app.test_client()
    assert sign_in(browser).status_code == 303
    thief.set_cookie("session", browser.get_cookie("session").value)
    assert thief.get("/").status_code == 200  # the copy works while the session lasts
    clock.advance(1)
    token = csrf(browser)
    assert browser.post("/signout", data={"csrf_token": token}).status_code == 303
    assert browser.get("/").status_code == 303
    refused = thief.get("/")
    assert refused.status_code == 303 and refused.headers["Location"].startswith("/signin")
    assert thief.post("/jobs", data={}).status_code in (400, 401)  # no upload either
    clock.advance(1)
    assert sign_in(browser).status_code == 303  # signing in again works
    assert browser.get("/").status_code == 200
    assert thief.get("/").status_code == 303  # the old copy stays dead


def test_sign_out_reaches_every_worker_of_the_host(keyed, tmp_path):
    """Two apps on one data folder stand for two gunicorn workers."""
    first = keyed(WHISPER_DATA_DIR=str(tmp_path / "shared"))
    second = keyed(WHISPER_DATA_DIR=str(tmp_path / "shared"))
    browser = first.test_client()
    sign_in(browser)
    other = second.test_client()
    other.set_cookie("session", browser.get_cookie("session").value)
    assert other.get("/").status_code == 200
    browser.post("/signout", data={"csrf_token": csrf(browser)})
    assert other.get("/").status_code == 303


def test_a_session_expires_after_its_lifetime(keyed):
    app = keyed(WHISPER_SESSION_HOURS="2")
    clock = FakeClock(1_000_000.0)
    with_clock(app, clock)
    browser = app.test_client()
    sign_in(browser)
    assert browser.get("/").status_code == 200
    clock.advance(2 * 3600 - 5)
    assert browser.get("/").status_code == 200
    clock.advance(10)
    assert browser.get("/").status_code == 303
    assert sign_in(browser).status_code == 303 and browser.get("/").status_code == 200


def test_the_session_cookie_has_an_expiry(keyed):
    app = keyed(WHISPER_SESSION_HOURS="2")
    client = app.test_client()
    sign_in(client)
    cookie = client.get_cookie("session")
    assert cookie.expires is not None


# --- rate limits on wrong keys -------------------------------------------------------------


def _signin_try(client, key, **kwargs):
    return client.post("/signin", data={"csrf_token": csrf(client, **kwargs), "key": key}, **kwargs)


def _api_try(path, method="get"):
    def attempt(client, key, **kwargs):
        return getattr(client, method)(path, headers={"Authorization": f"Bearer {key}"}, **kwargs)
    return attempt


FAMILIES = {
    "signin": (_signin_try, 401, 303),
    "native": (_api_try("/api/v1/models"), 401, 200),
    "openai": (_api_try("/v1/models"), 401, 200),
    "sagemaker": (_api_try("/invocations", "post"), 401, 415),  # no body: past the key
    "metrics": (_api_try("/metrics"), 401, 200),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_keys_past_the_limit_get_429_with_retry_after(keyed, family, caplog):
    attempt, refused, accepted = FAMILIES[family]
    app = keyed()
    clock = FakeClock()
    with_clock(app, clock, attempts=3, window=60)
    client = app.test_client()
    caplog.set_level(logging.INFO)
    for _ in range(3):
        assert attempt(client, WRONG).status_code == refused
    clock.advance(30)
    blocked = attempt(client, WRONG)
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) == 30
    assert "wrong API keys" in blocked.get_data(as_text=True)
    # a guesser cannot test keys while blocked: the right one is refused as well
    assert attempt(client, "secret-one").status_code == 429
    other = app.test_client()
    assert attempt(other, "secret-one", environ_base={"REMOTE_ADDR": "203.0.113.7"}
                   ).status_code == accepted  # other addresses are not affected
    clock.advance(31)
    assert attempt(client, "secret-one").status_code == accepted
    assert WRONG not in caplog.text and "secret-one" not in caplog.text
    assert "wrong API key from 127.0.0.1" in caplog.text


def test_the_setting_limits_and_the_families_share_one_count(keyed):
    app = keyed(WHISPER_KEY_FAILURES="3")
    client = app.test_client()
    bad = {"Authorization": f"Bearer {WRONG}"}
    assert client.get("/api/v1/models", headers=bad).status_code == 401
    assert client.get("/v1/models", headers=bad).status_code == 401
    assert _signin_try(client, WRONG).status_code == 401
    assert client.get("/metrics", headers=bad).status_code == 429
    answer = client.get("/v1/models", headers={"Authorization": "Bearer secret-one"})
    assert answer.status_code == 429 and answer.json["error"]["code"] == "too_many_key_failures"
    assert int(answer.headers["Retry-After"]) >= 1


def test_a_missing_key_is_not_a_guess(keyed):
    app = keyed(WHISPER_KEY_FAILURES="2")
    client = app.test_client()
    for _ in range(5):
        assert client.get("/api/v1/models").status_code == 401


def test_the_limiter_forgets_old_failures_and_bounds_its_memory():
    clock = FakeClock()
    limiter = FailureLimiter(Limit(2, 10), clock=clock, max_clients=3)
    assert limiter.failed("a") == 1 and limiter.wait("a") == 0
    clock.advance(4)
    assert limiter.failed("a") == 2 and limiter.wait("a") == pytest.approx(6)
    clock.advance(6)
    assert limiter.wait("a") == 0 and limiter.failed("a") == 2  # the first one left the window
    for name in "bcde":
        limiter.failed(name)
    assert len(limiter._failures) == 3 and "a" not in limiter._failures


# --- the cookie and trusted proxies --------------------------------------------------------


def _session_cookie(response) -> str:
    return next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("session="))


def test_the_cookie_is_samesite_lax_and_not_secure_over_http(keyed):
    cookie = _session_cookie(keyed().test_client().get("/signin"))
    assert "SameSite=Lax" in cookie and "HttpOnly" in cookie and "Secure" not in cookie


@pytest.mark.parametrize("peer, forwarded_for, config, secure", [
    ("127.0.0.1", "", {}, True),  # a proxy on this host: trusted by default
    ("203.0.113.9", "", {}, False),  # a client claiming HTTPS itself
    ("", "203.0.113.9", {}, False),  # through the bundled nginx, a client's claim passed on
    ("", "10.1.2.3", {"WHISPER_TRUSTED_PROXIES": "10.0.0.0/8"}, True),  # nginx behind a TLS proxy
    ("", "10.1.2.3", {}, False),  # ... that is not listed
    ("127.0.0.1", "", {"WHISPER_TRUSTED_PROXIES": "none"}, False),
])
def test_the_cookie_is_secure_when_a_trusted_proxy_says_https(keyed, peer, forwarded_for,
                                                              config, secure):
    client = keyed(**config).test_client()
    headers = {"X-Forwarded-Proto": "https"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    answer = client.get("/signin", headers=headers, environ_base={"REMOTE_ADDR": peer})
    cookie = _session_cookie(answer)
    assert ("; Secure" in cookie) is secure and "SameSite=Lax" in cookie


@pytest.mark.parametrize("peer, forwarded_for, client", [
    ("", "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # nginx appends its peer: the last
    ("203.0.113.9", "198.51.100.1", "203.0.113.9"),  # an untrusted peer's header is ignored
    ("127.0.0.1", "203.0.113.9, 127.0.0.2", "203.0.113.9"),  # trusted hops are skipped
    ("", "", ""),
])
def test_the_client_address_is_the_first_untrusted_hop(peer, forwarded_for, client):
    proxies = TrustedProxies(lambda environ, start: None, ("127.0.0.0/8", "::1"))
    assert proxies.client(peer, forwarded_for)[0] == client


def test_wrong_keys_through_nginx_count_per_client_address(keyed):
    app = keyed(WHISPER_KEY_FAILURES="2")
    client = app.test_client()
    bad = {"Authorization": f"Bearer {WRONG}"}

    def from_(address):
        return client.get("/api/v1/models", environ_base={"REMOTE_ADDR": ""},
                          headers={**bad, "X-Forwarded-For": address}).status_code

    assert [from_("203.0.113.1"), from_("203.0.113.1"), from_("203.0.113.1")] == [401, 401, 429]
    assert from_("203.0.113.2") == 401  # another client behind the same nginx


def test_live_handshakes_count_wrong_keys_too(keyed):
    app = keyed(WHISPER_KEY_FAILURES="2")
    client = app.test_client()
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
               "Authorization": f"Bearer {WRONG}"}
    codes = [client.get(path, headers=upgrade).status_code
             for path in ("/api/live", "/v1/realtime", "/api/live")]
    assert codes == [401, 401, 429]
