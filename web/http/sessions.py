"""When a browser's sign-in stops counting: on sign-out, and after WHISPER_SESSION_HOURS.

The session cookie is signed by Flask (the app's secret key) and carries the time of the
sign-in and the key's sign-out generation at that moment. Signing out advances the key's
generation, so every cookie of that key issued before it (the browser's own, and any copy
of it) stops counting, in every worker and on every host. The generations live where the
job store says (whisper_service/queue/store/signouts.py): with PostgreSQL in its
sign_outs table, so a cookie signed out on one web pod is refused on all of them; with
the embedded SQLite store (one host) as one small file per key in a `sign-outs` folder of
the data folder, which every gunicorn worker of the host reads. A counter, not a time, so
hosts' clocks need not agree on it.

The cookie is SameSite=Lax always and Secure when the request came over HTTPS (directly or
as a trusted proxy says, see forwarded.py).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable

from flask import Flask, has_request_context, request
from flask.sessions import SecureCookieSessionInterface

from whisper_service.queue.store.signouts import FolderSignOuts as SignOuts, SignOutBook

FOLDER = "sign-outs"  # in the data folder, where the job store keeps them in files
__all__ = ["FOLDER", "SessionCookies", "SessionRules", "SignOuts", "key_id"]


def key_id(fingerprint: str) -> str:
    """A file name for a key: derived from its HMAC, short, and no help to a guesser."""
    return hashlib.sha256(f"sign-out:{fingerprint}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SessionRules:
    sign_outs: SignOutBook  # each key's sign-out generation (JobStore.sign_outs())
    lifetime: float  # seconds a sign-in counts (WHISPER_SESSION_HOURS)
    # wall-clock seconds: a session may be checked by another process or host
    clock: Callable[[], float] = time.time

    def current(self, signed_in_at: object, generation: object, fingerprint: str) -> bool:
        """Whether a sign-in made at `signed_in_at` in `generation` still counts."""
        if not isinstance(signed_in_at, (int, float)) or not isinstance(generation, int):
            return False  # a cookie from before sessions expired: sign in again
        if self.clock() - signed_in_at >= self.lifetime:
            return False
        return generation == self.sign_outs.generation(key_id(fingerprint))


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed cookie, Secure whenever the request itself is HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        configured = bool(app.config["SESSION_COOKIE_SECURE"])
        return configured or (has_request_context() and request.is_secure)
