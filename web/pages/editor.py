"""The transcript page's corrections and picture of the audio, for the browser (its session
and CSRF token, not an API key): the page's script posts edits as JSON and gets the lines
back rendered, so the page shows exactly what the server kept.

The API (web/api/editing.py) does the same for programs; both go through JobQueue, with
what they share in web/http/corrections.py.
"""

from __future__ import annotations

from flask import Blueprint, abort, jsonify, redirect, render_template, url_for

from web.http.corrections import ORIGINAL_RULE, ORIGINAL_SUFFIX, apply_request_edits, envelope_of
from web.http.downloads import transcript_download
from web.http.errors import describe
from web.http.signin import require_web_access
from web.pages.views import UNSURE_PROBABILITY, jobs
from whisper_service.errors import ServiceError
from whisper_service.queue.jobs import Job

blueprint = Blueprint("editor", __name__)
blueprint.before_request(require_web_access)


@blueprint.post("/jobs/<job_id>/edits")
def save_edits(job_id: str):
    """JSON {"edits": [...]} in (X-CSRF-Token header), {"html": the lines, "edited"} out;
    an edit that cannot apply: 400 with the error as the API words it."""
    job = _done_job(job_id)
    try:
        transcript = apply_request_edits(jobs(), job)
    except ServiceError as error:
        status, code, message, field = describe(error)
        return jsonify(error={"code": code, "message": message, "field": field}), status
    return {"html": render_template("_segments.html", transcript=transcript,
                                    unsure=UNSURE_PROBABILITY), "edited": True}


@blueprint.post("/jobs/<job_id>/edits/restore")
def restore(job_id: str):
    """Back to the model's transcript; a plain form post, so it works without script too."""
    jobs().restore_transcript(_done_job(job_id).id)
    return redirect(url_for("pages.job_page", job_id=job_id), code=303)


@blueprint.get(ORIGINAL_RULE)
def original(job_id: str, fmt: str):
    job = _done_job(job_id)
    return transcript_download(job, jobs().original_transcript(job.id), fmt, ORIGINAL_SUFFIX)


@blueprint.get("/jobs/<job_id>/envelope.json")
def envelope(job_id: str):
    return envelope_of(jobs(), _done_job(job_id))


def _done_job(job_id: str) -> Job:
    job = jobs().get(job_id)
    if job is None or job.state.value != "done":
        abort(404)
    return job
