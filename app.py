"""The Flask application: `create_app()` builds it; nothing heavy happens at import.

Configuration comes in layers: Settings' defaults, then the instance folder's config.py
(or `test_config`), then WHISPER_* environment variables. The job consumer starts with the
app (so queued and interrupted jobs resume after a restart); the model loads on first use.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any, Mapping, Optional

from flask import Flask

from web import live
from web.api import docs, editing, finetunes, metrics, native, openai_compat, sagemaker
from web.http import auth, drain, errors, intake, proxy, security, signin, streaming
from web.http.forwarded import TrustedProxies
from web.http.ratelimit import FailureLimiter, Limit
from web.http.sessions import FOLDER as SIGN_OUTS, SessionRules
from web.http.sync import SyncWaiters
from web.pages import archive, editor, failed, models as models_page, views
from whisper_service.config import Settings
from whisper_service.queue.finetune_store import open_fine_tune_store
from whisper_service.queue.finetunes import FOLDER as FINE_TUNES, FineTunes
from whisper_service.queue.jobs import JobQueue
from whisper_service.service import WhisperService
from whisper_service.queue.store import open_store
from whisper_service.queue.store.space import MB, DiskSpace

HOURS = 3600


def create_app(test_config: Optional[Mapping[str, Any]] = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    if test_config is None:
        app.config.from_pyfile("config.py", silent=True)
    else:
        app.config.from_mapping(test_config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = security.persistent_secret_key(app.instance_path)

    layered = {k: str(v) for k, v in app.config.items() if k.startswith("WHISPER_")}
    layered.update({k: v for k, v in os.environ.items() if k.startswith("WHISPER_")})
    settings = Settings.from_env(layered)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(hours=settings.session_hours)
    app.wsgi_app = TrustedProxies(app.wsgi_app, settings.trusted_proxies)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = WhisperService(settings)
    data_folder = settings.data_dir or os.path.join(app.instance_path, "jobs")
    space = DiskSpace(data_folder, settings.min_free_mb * MB)
    queue = JobQueue(
        open_store(settings.database_url, data_folder, settings.object_store),
        service,
        max_queued=settings.max_queued,
        max_attempts=settings.max_attempts,
        retention_seconds=settings.retention_hours * HOURS,
        shared_jobs=settings.shared_jobs,
        lease_seconds=settings.lease_seconds,
        space=space,
    )
    fine_tunes = FineTunes(open_fine_tune_store(settings, os.path.join(data_folder, FINE_TUNES)),
                           settings, service.models, busy=lambda: queue.queued_count() > 0)
    app.extensions[finetunes.EXTENSION] = fine_tunes
    fine_tunes.offer_finished()
    app.extensions.update(whisper_settings=settings, whisper_service=service, whisper_jobs=queue,
                          whisper_disk=space,
                          whisper_sync_waiters=SyncWaiters(settings.sync_waiters))
    app.extensions[auth.LIMITER] = FailureLimiter(
        Limit(settings.key_failures, settings.key_failure_window))
    app.extensions[signin.RULES] = SessionRules(
        queue.store.sign_outs(os.path.join(data_folder, SIGN_OUTS)), settings.session_hours * HOURS)

    app.register_blueprint(views.blueprint)
    app.register_blueprint(editor.blueprint)
    app.register_blueprint(failed.blueprint)
    app.register_blueprint(archive.blueprint)
    app.register_blueprint(signin.blueprint)
    app.register_blueprint(docs.blueprint)
    app.register_blueprint(native.blueprint)
    app.register_blueprint(editing.blueprint)
    app.register_blueprint(sagemaker.blueprint)
    app.register_blueprint(sagemaker.probes)
    app.register_blueprint(native.public)
    app.register_blueprint(openai_compat.blueprint)
    app.register_blueprint(metrics.blueprint)
    app.register_blueprint(finetunes.blueprint)
    app.register_blueprint(models_page.blueprint)
    live.register(app)
    errors.register(app)
    intake.register(app, intake.UploadPlaces(settings.sync_waiters + intake.UPLOADS_BESIDE_WAITERS),
                    space)
    # what nginx lets through at most: the largest upload and its multipart framing
    drain.register(app, settings.max_upload_bytes + proxy.UPLOAD_SLACK_MB * 1024 * 1024)
    security.register(app)
    streaming.register(app)  # after security: it extends the request class security sets
    if settings.role == "web":  # HTTP only: `python -m whisper_service worker` transcribes
        return app
    if settings.preload:
        app.extensions["whisper_preload"] = service.preload_in_background()
    queue.start()
    fine_tunes.start()  # in the process that transcribes, after its jobs (and on workers)
    return app
