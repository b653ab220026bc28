"""A failed job's page offers what can be done: "Try again" (the same file and options,
as a new job) and "Try with another model"; a refused file offers neither (another file
is needed). The sentence shown is the job's (whisper_service/failures.py); a signed-in
operator also sees the detail, under "Details".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from flask import Blueprint, abort, current_app, redirect, request, url_for

from web.http.signin import require_web_access, signed_in
from web.pages.views import jobs, remember
from whisper_service.errors import BadOption
from whisper_service.failures import remedies, scrub
from whisper_service.queue.jobs import Job, JobState

blueprint = Blueprint("failed", __name__)
blueprint.before_request(require_web_access)


@dataclass(frozen=True)
class FailedView:
    """What the failed job's part of the page shows."""

    sentence: str  # what happened, as a sentence
    retry: bool  # "Try again" is offered
    models: Tuple[Tuple[str, str], ...]  # (name, label) for "Try with another model"; () none
    detail: Optional[str]  # the operator's detail, for a signed-in operator only


@blueprint.app_template_global()
def failed_view(job: Job) -> FailedView:
    """What the job page shows of a failed job (a template global: job.html asks)."""
    registry = current_app.extensions["whisper_service"].models
    can_retry, other_model = remedies(job.error_kind, job.error_field)
    tried = job.options.model or registry.default
    models: List[Tuple[str, str]] = []
    if other_model:
        models = [(name, registry.label(name)) for name in registry.allowed if name != tried]
    # jobs failed before failures.py kept the operator's text: no path or errno of it shows
    error = scrub(job.error or "") or "the transcription failed"
    # a clause ("'talk.mp3' is truncated: ...", "language: ...") gets a beginning; the
    # sentences of failures.py have one
    sentence = error if error[:1].isupper() else f"This file could not be transcribed: {error}"
    return FailedView(sentence=sentence, retry=can_retry, models=tuple(models),
                      detail=job.error_detail if signed_in() else None)


@blueprint.post("/jobs/<job_id>/again")
def again(job_id: str):
    """The failed job's file and options as a new job (with `model` from the form, when
    given); the browser goes to the new job's page."""
    job = jobs().get(job_id)
    if job is None:
        abort(404)
    if job.state != JobState.FAILED:
        raise BadOption("job", "only a failed job can be tried again")
    options = job.options
    model = request.form.get("model", "").strip()
    if model:
        options = options.with_changes(model=current_app.extensions["whisper_service"]
                                       .models.check_allowed(model))
    try:
        media = open(job.media_path, "rb")
    except OSError:  # deleted meanwhile, or past its retention
        raise BadOption("job", "its upload is no longer on the server; upload the file again") from None
    with media:
        created = jobs().submit(media, job.filename, options)
    remember([created.id])
    return redirect(url_for("pages.job_page", job_id=created.id), code=303)
