"""What the API and the pages share for a transcript's corrections and the picture of its
audio: reading a request's edits and applying them, and the loudness envelope."""

from __future__ import annotations

from flask import current_app, request

from whisper_service.errors import BadOption
from whisper_service.queue.jobs import Job, JobQueue
from whisper_service.transcript import Transcript
from whisper_service.transcript_edits import EDITS_FIELD, parse_edits
from whisper_service.writers import FORMATS

# the model's transcript in one format, beside /jobs/<id>/transcript.<fmt>
ORIGINAL_RULE = f"/jobs/<job_id>/original.<any({', '.join(FORMATS)}):fmt>"
ORIGINAL_SUFFIX = "-original"  # of its download's name: 'talk-original.srt'


def apply_request_edits(queue: JobQueue, job: Job) -> Transcript:
    """The request's edits applied to the job's transcript and kept; BadOption for a body
    that is not `{"edits": [...]}` as JSON, or an edit that cannot apply."""
    if not request.is_json:
        raise BadOption(EDITS_FIELD, 'send {"edits": [...]} as JSON (Content-Type: application/json)')
    edited = queue.edit_transcript(job.id, parse_edits(request.get_json()))
    if edited is None:
        raise BadOption(EDITS_FIELD, "this job has no transcript to correct")
    return edited


def envelope_of(queue: JobQueue, job: Job) -> dict:
    """The job's loudness envelope, decoding its upload the first time (the same limits as
    a transcription); an empty one when the upload is gone."""
    service = current_app.extensions["whisper_service"]
    return queue.envelope(job.id, service.decode) or {
        "duration": 0.0, "seconds_per_bin": 0.0, "bins": 0, "floor_db": 0.0, "levels": ""}
