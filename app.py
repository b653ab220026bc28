"""The Flask application: `create_app()` builds it; nothing heavy happens at import.

Configuration comes in layers: Settings' defaults, then the instance folder's config.py
(or `test_config`), then WHISPER_* environment variables. The model loads on first use.
"""

from __future__ import annotations

import logging
import os
import secrets
from typing import Any, Mapping, Optional

from flask import Flask

from web import errors, pages
from whisper_service.config import Settings


def create_app(test_config: Optional[Mapping[str, Any]] = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(SECRET_KEY=secrets.token_hex(32))
    if test_config is None:
        app.config.from_pyfile("config.py", silent=True)
    else:
        app.config.from_mapping(test_config)
    os.makedirs(app.instance_path, exist_ok=True)

    layered = {k: str(v) for k, v in app.config.items() if k.startswith("WHISPER_")}
    layered.update({k: v for k, v in os.environ.items() if k.startswith("WHISPER_")})
    settings = Settings.from_env(layered)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.extensions["whisper_settings"] = settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app.register_blueprint(pages.blueprint)
    errors.register(app)
    return app
