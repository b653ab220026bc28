"""OpenAI-compatible endpoints under /v1, so OpenAI's own clients work unchanged."""

from __future__ import annotations

from flask import Blueprint

from web.auth import require_api_key

blueprint = Blueprint("openai", __name__, url_prefix="/v1")
blueprint.before_request(require_api_key)
