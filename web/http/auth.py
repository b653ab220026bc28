"""Optional API keys: when any are configured, /api and /v1 need `Authorization: Bearer KEY`.

Wrong keys count against the client's address (ratelimit.py): past the limit every key
check from there is 429 with Retry-After. Each wrong key is logged with the address and
the path, never the key.
"""

from __future__ import annotations

import hmac
import logging
from typing import Optional, Sequence

from flask import current_app, request
from werkzeug.exceptions import Unauthorized

from web.http.ratelimit import FailureLimiter, TooManyKeyFailures

log = logging.getLogger(__name__)
LIMITER = "whisper_key_failures"  # the app.extensions entry of the process's FailureLimiter


class ApiKeyRequired(Unauthorized):
    description = "This API needs a key: send the header 'Authorization: Bearer <key>'."

    def get_headers(self, environ=None, scope=None):
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", 'Bearer realm="whisper"')]


def require_api_key() -> None:
    """A before_request hook for the API blueprints. Keys are compared in constant time
    and never logged."""
    keys = current_app.extensions["whisper_settings"].api_keys
    if not keys:
        return
    if not check_key(bearer_key(), keys):
        raise ApiKeyRequired()


def bearer_key() -> Optional[str]:
    """The key of `Authorization: Bearer <key>`, or None without one."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def check_key(given: Optional[str], keys: Sequence[str]) -> bool:
    """Whether `given` is one of the keys. An address past its limit of wrong keys gets
    TooManyKeyFailures (429) before any comparison; a wrong key counts and is logged
    (no key sent at all is only a missing key)."""
    limiter: FailureLimiter = current_app.extensions[LIMITER]
    client = request.remote_addr or "unknown"
    wait = limiter.wait(client)
    if wait > 0:
        log.warning("429 for %s at %s: too many wrong API keys", client, request.path)
        raise TooManyKeyFailures(wait, limiter.limit)
    if not given:
        return False
    if key_matches(given, keys):
        return True
    count = limiter.failed(client)
    log.warning("wrong API key from %s at %s (%d of %d within %g s)", client, request.path,
                count, limiter.limit.attempts, limiter.limit.window)
    return False


def key_matches(given: str, keys: Sequence[str]) -> bool:
    """Whether `given` is one of the keys, compared in constant time with every key, so the
    time taken says nothing about which one nearly matched."""
    given_bytes = given.encode()
    return any([hmac.compare_digest(given_bytes, key.encode()) for key in keys])
