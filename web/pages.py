"""The browser pages: upload, job (progress, then transcript), recent jobs, downloads.

Views only translate HTTP to and from the job queue; the model runs in its consumer.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from flask import (
    Blueprint, Response, abort, current_app, jsonify, redirect, render_template, request,
    send_file, session, url_for,
)
from whisper.tokenizer import LANGUAGES

from whisper_service.audio import PLAYABLE_TYPES, UNKNOWN_MEDIA_TYPE, format_duration
from whisper_service.errors import BadOption
from web.downloads import attachment, transcript_download
from web.signin import require_web_access
from whisper_service.jobs import Job, JobQueue
from whisper_service.options import OPTION_NAMES, TranscribeOptions, language_name
from whisper_service.writers import FORMATS

blueprint = Blueprint("pages", __name__)
blueprint.before_request(require_web_access)
RECENT_JOBS_KEPT = 20  # ids remembered in this browser's session cookie


def jobs() -> JobQueue:
    return current_app.extensions["whisper_jobs"]


@blueprint.get("/")
def index():
    settings = current_app.extensions["whisper_settings"]
    models = current_app.extensions["whisper_service"].models
    return render_template(
        "index.html", settings=settings, models=models.allowed, default_model=models.default,
        defaults=TranscribeOptions(),
        languages=sorted(LANGUAGES.items(), key=lambda item: item[1]),
    )


@blueprint.post("/jobs")
def submit():
    media = request.files.get("file")
    if media is None or not media.filename:
        raise BadOption("file", "choose an audio or video file to upload")
    # a checkbox sends a hidden "false" first and "true" after it when ticked: the last wins
    form = {name: request.form.getlist(name)[-1] for name in OPTION_NAMES if name in request.form}
    job = jobs().submit(media.stream, media.filename, TranscribeOptions.from_mapping(form))
    session["jobs"] = [job.id, *session.get("jobs", [])][:RECENT_JOBS_KEPT]
    return redirect(url_for("pages.job_page", job_id=job.id), code=303)


@blueprint.get("/jobs")
def recent():
    return render_template("jobs.html", jobs=jobs().list(session.get("jobs", [])))


@blueprint.get("/jobs/<job_id>")
def job_page(job_id: str):
    job = _job(job_id)
    transcript = jobs().transcript(job.id) if job.state == "done" else None
    return render_template(
        "job.html", job=job, transcript=transcript, formats=FORMATS,
        language=language_name(transcript.language) if transcript else None,
        media_type=media_type(job), playable=media_type(job) in PLAYABLE_TYPES,
    )


@blueprint.get("/jobs/<job_id>/status")
def status(job_id: str):
    job = _job(job_id)
    return jsonify(
        state=job.state.value, progress=job.progress, eta_seconds=job.eta_seconds,
        position=job.position, error=job.error,
    )


@blueprint.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    jobs().cancel(_job(job_id).id)
    return redirect(url_for("pages.job_page", job_id=job_id), code=303)


@blueprint.post("/jobs/<job_id>/delete")
def delete(job_id: str):
    jobs().delete(_job(job_id).id)
    session["jobs"] = [i for i in session.get("jobs", []) if i != job_id]
    return redirect(url_for("pages.recent"), code=303)


@blueprint.get("/jobs/<job_id>/media")
def media(job_id: str):
    """The upload, typed by what ffmpeg found in it, never by its name: a file that is audio
    and HTML at once is served as audio, sandboxed, so no script of it runs on this site."""
    job = _job(job_id)
    kind = media_type(job)
    # conditional: range requests let the player seek without downloading everything
    response = send_file(job.media_path, mimetype=kind, conditional=True)
    if kind not in PLAYABLE_TYPES:  # not for a player: a download, never shown inline
        response.headers["Content-Disposition"] = attachment(job.filename)
    return response


@blueprint.get("/jobs/<job_id>/transcript.<fmt>")  # an unknown format: 400 naming them
def download(job_id: str, fmt: str):
    job = _job(job_id)
    transcript = jobs().transcript(job.id)
    if transcript is None:
        abort(404)
    return transcript_download(job, transcript, fmt)


@blueprint.app_template_filter("isotime")
def isotime(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@blueprint.app_template_filter("clock")
def clock(seconds: float) -> str:
    """1:02:05 or 2:05: a position in the recording."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


blueprint.add_app_template_filter(format_duration, "duration")


def media_type(job: Job) -> str:
    """What the upload's content is; jobs from before content types were kept are unknown."""
    return job.media_type or UNKNOWN_MEDIA_TYPE


def _job(job_id: str) -> Job:
    job = jobs().get(job_id)
    if job is None:
        abort(404)
    return job
