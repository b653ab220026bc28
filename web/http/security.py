"""CSRF tokens on every form post, and headers that keep the pages to themselves."""

from __future__ import annotations

import hmac
import os
import secrets

from flask import Flask, Request, abort, request, session
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from web.http.client_json import BadJson, parse_client_json
from web.http.sessions import SessionCookies

CSRF_FIELD = "csrf_token"
FORM_BLUEPRINTS = ("pages", "editor", "signin")  # the parts of the site that take browser forms
CSRF_HEADER = "X-CSRF-Token"
SECRET_FILE = "secret_key"
# no inline script or style, media only from here; the pages need nothing else
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
# everything that is not one of our pages (media, downloads, JSON, text): nothing in it may
# run or load anything, even if a browser is made to open it as a document
SANDBOX_POLICY = "default-src 'none'; sandbox; frame-ancestors 'none'"


class JsonProvider(DefaultJSONProvider):
    """Request bodies are parsed by the one guarded parser of client JSON: nested too
    deeply or broken, they are a bad request (BadJson), not a crash."""

    def loads(self, s, **kwargs):
        return parse_client_json(s) if not kwargs else super().loads(s, **kwargs)


class JsonRequest(Request):
    def get_data(self, cache=True, as_text=False, parse_form_data=False):
        """A chunked body (no Content-Length) is cut at the size limit by werkzeug without a
        word, and would then read as broken JSON: it is 413, as a declared size would be."""
        data = super().get_data(cache=cache, as_text=False, parse_form_data=parse_form_data)
        limit = self.max_content_length
        if limit is not None and self.content_length is None and len(data) >= limit:
            raise RequestEntityTooLarge()
        return data.decode("utf-8", "replace") if as_text else data

    def on_json_loading_failed(self, e):
        if e is None:  # not sent as application/json
            return super().on_json_loading_failed(e)
        if isinstance(e, BadJson):
            raise BadRequest(f"The body is {e}.")
        raise BadRequest(f"The body is not valid JSON: {str(e)[:200]}")


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
    app.json = JsonProvider(app)
    app.request_class = JsonRequest
    # the session cookie: not sent along by other sites' forms, Secure over HTTPS
    app.config["SESSION_COOKIE_SAMESITE"] = app.config["SESSION_COOKIE_SAMESITE"] or "Lax"
    app.session_interface = SessionCookies()

    @app.before_request
    def check_csrf():
        if request.method != "POST" or request.blueprint not in FORM_BLUEPRINTS:
            return
        sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER, "")
        expected = session.get(CSRF_FIELD, "")
        if not expected or not hmac.compare_digest(sent, expected):
            abort(400, description="The form expired or did not come from this site; "
                                   "reload the page and try again.")

    @app.after_request
    def security_headers(response):
        policy = CONTENT_SECURITY_POLICY if response.mimetype == "text/html" else SANDBOX_POLICY
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response
