"""Correcting a done job's transcript over the native API, and the picture of its audio.

* PATCH /api/v1/jobs/<id>/transcript takes `{"edits": [...]}` (whisper_service/
  transcript_edits.py says what each edit is) and answers the corrected transcript; every
  download and GET of the transcript shows it from then on. 400 names the edit, line and
  field at fault, and nothing is kept of a request that has one.
* DELETE /api/v1/jobs/<id>/transcript/edits drops the corrections: the model's transcript
  is shown again.
* GET /api/v1/jobs/<id>/original.<fmt> is the model's transcript, whatever the corrections.
* GET /api/v1/jobs/<id>/envelope is the audio's loudness over time (loudness.py), computed
  on first request and kept with the job.
"""

from __future__ import annotations

from flask import Blueprint

from web.api.native import find_job, finished_transcript, jobs
from web.http.auth import require_api_key
from web.http.corrections import ORIGINAL_RULE, ORIGINAL_SUFFIX, apply_request_edits, envelope_of
from web.http.downloads import transcript_download

blueprint = Blueprint("api_edits", __name__, url_prefix="/api/v1")
blueprint.before_request(require_api_key)


@blueprint.patch("/jobs/<job_id>/transcript")
def edit_transcript(job_id: str):
    job = find_job(job_id)
    finished_transcript(job)  # 404 until done, 409 for a job that never will be
    return apply_request_edits(jobs(), job).to_dict()


@blueprint.delete("/jobs/<job_id>/transcript/edits")
def restore_transcript(job_id: str):
    job = find_job(job_id)
    finished_transcript(job)
    jobs().restore_transcript(job.id)
    return "", 204


@blueprint.get(ORIGINAL_RULE)
def original_file(job_id: str, fmt: str):
    job = find_job(job_id)
    finished_transcript(job)
    return transcript_download(job, jobs().original_transcript(job.id), fmt, ORIGINAL_SUFFIX)


@blueprint.get("/jobs/<job_id>/envelope")
def envelope(job_id: str):
    job = find_job(job_id)
    finished_transcript(job)
    return envelope_of(jobs(), job)
