"""The web pages behind API keys: with WHISPER_WEB_UI=key (the default whenever API keys are
set) a browser signs in once with one of the keys, and its session remembers which; with
off the pages are not served at all. The JSON APIs check their keys themselves (auth.py).

The session keeps an HMAC of the key under the app's secret, never the key: removing a key
from the configuration signs out every browser that used it. It also keeps when it signed
in and the key's sign-out generation (sessions.py): signing out ends every session of that
key, copies of the cookie included, and a sign-in lasts WHISPER_SESSION_HOURS. Wrong keys
count against the address like the APIs' (auth.check_key).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Optional
from urllib.parse import urlsplit

from flask import (
    Blueprint, abort, current_app, redirect, render_template, request, session, url_for,
)

from web.http.auth import check_key
from web.http.sessions import SessionRules, key_id

blueprint = Blueprint("signin", __name__)
SESSION_KEY = "signed_in_with"  # the HMAC of the key a browser signed in with
SIGNED_IN_AT = "signed_in_at"  # wall-clock seconds of the sign-in
GENERATION = "sign_out_generation"  # the key's sign-out generation at the sign-in
RULES = "whisper_session_rules"  # the app.extensions entry of the SessionRules
UI_OFF = "The web interface is turned off on this server (WHISPER_WEB_UI=off); use the API."


def _fingerprint(key: str) -> str:
    secret = current_app.config["SECRET_KEY"].encode()
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def signed_in() -> bool:
    remembered = session.get(SESSION_KEY)
    keys = current_app.extensions["whisper_settings"].api_keys
    if not isinstance(remembered, str) or not any(
            [hmac.compare_digest(remembered, _fingerprint(key)) for key in keys]):
        return False
    rules: SessionRules = current_app.extensions[RULES]
    return rules.current(session.get(SIGNED_IN_AT), session.get(GENERATION), remembered)


def _sign_in(key: str) -> None:
    rules: SessionRules = current_app.extensions[RULES]
    fingerprint = _fingerprint(key)
    session.permanent = True  # the cookie lasts PERMANENT_SESSION_LIFETIME, not forever
    session.update({SESSION_KEY: fingerprint, SIGNED_IN_AT: rules.clock(),
                    GENERATION: rules.sign_outs.generation(key_id(fingerprint))})


def require_web_access():
    """A before_request hook of the pages: served as WHISPER_WEB_UI says."""
    mode = current_app.extensions["whisper_settings"].web_ui
    if mode == "off":
        abort(404, description=UI_OFF)
    if mode == "key" and not signed_in():
        if request.method != "GET":
            abort(401, description="Sign in with an API key first.")
        return redirect(url_for("signin.signin", next=request.full_path.rstrip("?")), code=303)
    return None


@blueprint.route("/signin", methods=["GET", "POST"])
def signin():
    mode = current_app.extensions["whisper_settings"].web_ui
    if mode == "off":
        abort(404, description=UI_OFF)
    target = _local(request.values.get("next")) or url_for("pages.index")
    if mode == "open" or signed_in():
        return redirect(target, code=303)
    error = None
    if request.method == "POST":
        key = request.form.get("key", "").strip()
        if check_key(key, current_app.extensions["whisper_settings"].api_keys):
            _sign_in(key)
            return redirect(target, code=303)
        error = "That is not one of this server's API keys."
    status = 401 if error else 200
    return render_template("signin.html", error=error, target=target), status


@blueprint.post("/signout")
def signout():
    """Ends this browser's session and every other one of its key (copies of the cookie)."""
    if signed_in():
        rules: SessionRules = current_app.extensions[RULES]
        rules.sign_outs.advance(key_id(session[SESSION_KEY]))
    for name in (SESSION_KEY, SIGNED_IN_AT, GENERATION):
        session.pop(name, None)
    return redirect(url_for("signin.signin"), code=303)


def _local(target: Optional[str]) -> Optional[str]:
    """A path on this site to go back to after signing in; anything else is dropped, so the
    sign-in page cannot send a browser elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    parts = urlsplit(target)
    return None if parts.scheme or parts.netloc or "\\" in target else target


@blueprint.app_context_processor
def sign_in_state() -> dict:
    """Whether the pages show a sign-out button."""
    settings = current_app.extensions["whisper_settings"]
    return {"signed_in": settings.web_ui == "key" and signed_in()}
