"""CSRF tokens on every form post, and headers that keep the pages to themselves."""

from __future__ import annotations

import hmac
import os
import secrets

from flask import Flask, abort, request, session

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SECRET_FILE = "secret_key"
# no inline script or style, media only from here; the pages need nothing else
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


def persistent_secret_key(instance_path: str) -> str:
    """One key for every worker process and restart, so sessions stay valid."""
    path = os.path.join(instance_path, SECRET_FILE)
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except FileNotFoundError:
        key = secrets.token_hex(32)
        # O_EXCL: when two workers race, one writes and both read the winner's key
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return persistent_secret_key(instance_path)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key)
        return key


def csrf_token() -> str:
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def register(app: Flask) -> None:
    app.jinja_env.globals["csrf_token"] = csrf_token

    @app.before_request
    def check_csrf():
        if request.method != "POST" or request.blueprint != "pages":
            return
        sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER, "")
        expected = session.get(CSRF_FIELD, "")
        if not expected or not hmac.compare_digest(sent, expected):
            abort(400, description="The form expired or did not come from this site; "
                                   "reload the page and try again.")

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response
