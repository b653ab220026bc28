"""The native JSON API under /api/v1, the JumpStart-style /invocations, and /readyz."""

from __future__ import annotations

from flask import Blueprint

from web.auth import require_api_key

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")
blueprint.before_request(require_api_key)
