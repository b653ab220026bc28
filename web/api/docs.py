"""Interactive API docs at /docs: Swagger UI over /api/openapi.json, its files served from
the pinned flask-swagger-ui package (no CDN), started by a script file of ours (no inline
script)."""

from __future__ import annotations

import os

import flask_swagger_ui
from flask import Blueprint, render_template, send_from_directory

blueprint = Blueprint("docs", __name__)
# Swagger UI sets style attributes on its elements; only styles are let in inline
DOCS_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
SWAGGER_UI = os.path.join(os.path.dirname(flask_swagger_ui.__file__), "dist")
ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")


@blueprint.get("/docs")
def docs():
    return render_template("docs.html"), {"Content-Security-Policy": DOCS_POLICY}


@blueprint.get("/docs/assets/<any(" + ", ".join(f'"{a}"' for a in ASSETS) + "):name>")
def asset(name: str):
    return send_from_directory(SWAGGER_UI, name, max_age=86400)
