"""When a browser's sign-in stops counting: on sign-out, and after WHISPER_SESSION_HOURS.

The session cookie is signed by Flask (the app's secret key) and carries the time of the
sign-in and the key's sign-out generation at that moment. Signing out advances the key's
generation, so every cookie of that key issued before it (the browser's own, and any copy
of it) stops counting, in every worker. The generations live as one small file per key in
a `sign-outs` folder of the data folder (WHISPER_DATA_DIR): every gunicorn worker of a
host reads them, with no change to the job store, and hosts that share the folder share
the sign-outs. A counter, not a time, so hosts' clocks need not agree on it.

The cookie is SameSite=Lax always and Secure when the request came over HTTPS (directly or
as a trusted proxy says, see forwarded.py).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

from flask import Flask, has_request_context, request
from flask.sessions import SecureCookieSessionInterface

FOLDER = "sign-outs"


class SignOuts:
    """Each key's sign-out generation: a number in a file named after the key's id."""

    def __init__(self, folder: str):
        self.folder = folder

    def generation(self, key_id: str) -> int:
        try:
            with open(self._path(key_id), encoding="ascii") as f:
                return int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def advance(self, key_id: str) -> int:
        """The next generation, written whole (a reader never sees half a number)."""
        os.makedirs(self.folder, exist_ok=True)
        following = self.generation(key_id) + 1
        fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(str(following))
        os.replace(temporary, self._path(key_id))
        return following

    def _path(self, key_id: str) -> str:
        return os.path.join(self.folder, key_id)


def key_id(fingerprint: str) -> str:
    """A file name for a key: derived from its HMAC, short, and no help to a guesser."""
    return hashlib.sha256(f"sign-out:{fingerprint}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SessionRules:
    sign_outs: SignOuts  # each key's sign-out generation
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
