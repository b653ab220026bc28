"""Optional API keys: when any are configured, /api and /v1 need `Authorization: Bearer KEY`."""

from __future__ import annotations

import hmac
from typing import Sequence

from flask import current_app, request
from werkzeug.exceptions import Unauthorized


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
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key_matches(given.strip(), keys):
        raise ApiKeyRequired()


def key_matches(given: str, keys: Sequence[str]) -> bool:
    """Whether `given` is one of the keys, compared in constant time with every key, so the
    time taken says nothing about which one nearly matched."""
    given_bytes = given.encode()
    return any([hmac.compare_digest(given_bytes, key.encode()) for key in keys])
