"""/metrics (Prometheus text format, behind the API keys when there are any), and what
/readyz says on a web-only host."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from web.http.auth import require_api_key
from whisper_service import metrics
from whisper_service.queue.jobs import JobQueue

blueprint = Blueprint("metrics", __name__)
blueprint.before_request(require_api_key)


@blueprint.get("/metrics")
def prometheus():
    queue: JobQueue = current_app.extensions["whisper_jobs"]
    scheduler = current_app.extensions.get("whisper_live")
    live = (scheduler.active, scheduler.max_sessions) if scheduler is not None else None
    room = current_app.extensions["whisper_disk"].room()
    text = metrics.render(queue.store.counts(), queue.store.counters(), queue.live_workers(),
                          live, disk=(room.free_bytes, room.min_free_bytes))
    return Response(text, content_type=metrics.CONTENT_TYPE)


def web_only_readiness(queue: JobQueue, body: dict):
    """A web-only host (WHISPER_ROLE=web) runs no model: it is ready when the store answers
    and uploads are accepted. It names the workers seen recently; none is not an error (a
    scaler may start them when the queue grows), but it is said."""
    workers = queue.live_workers()
    body = {**body, "role": "web",
            "workers": [{"name": w["name"], "seen_seconds_ago": round(w["seen"], 1),
                         **w["info"]} for w in workers]}
    if body["queued"] >= queue.max_queued:
        return {"status": "busy", **body}, 503
    if not workers:
        body["notice"] = "no worker has been seen recently; queued jobs wait for one"
    return {"status": "ready", **body}
