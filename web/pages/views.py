"""The browser pages: upload, job (progress, then transcript), recent jobs, downloads.

Views only translate HTTP to and from the job queue; the model runs in its consumer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import List, Optional, Sequence

from flask import (
    Blueprint, abort, current_app, jsonify, redirect, render_template, request, send_file,
    session, url_for,
)
from whisper.tokenizer import LANGUAGES

from whisper_service import model_menu
from whisper_service.audio import PLAYABLE_TYPES, UNKNOWN_MEDIA_TYPE, format_duration
from whisper_service.errors import BadOption, MediaError
from web.http.downloads import attachment, transcript_download
from web.http.errors import status_of
from web.pages.presets import DEFAULT_PRESET, PRESETS, apply_preset
from web.http.signin import require_web_access
from web.http.streaming import streams_uploads
from web.pages.upload_errors import RefusedFile, refused
from whisper_service.queue.jobs import Job, JobQueue, QueueFull, clean_filename
from whisper_service.options import OPTION_NAMES, TranscribeOptions, language_name
from whisper_service.writers import FORMATS

blueprint = Blueprint("pages", __name__)
blueprint.before_request(require_web_access)
RECENT_JOBS_KEPT = 20  # ids remembered in this browser's session cookie
QUEUE_FULL_WORDS = "The queue is full, so {name} was not queued; try it again later."
SPEAKER_FIELD = "speaker-"  # + a speaker's id: its new name, in the rename form
MAX_SPEAKER_NAME = 60  # characters of a speaker's name
SPEAKER_COLOURS = 8  # distinct colours in style.css; further speakers reuse them
UNSURE_PROBABILITY = 0.5  # a word the model gave less than this can be marked for a person to check
HOURS_PER_DAY = 24


def jobs() -> JobQueue:
    return current_app.extensions["whisper_jobs"]


@blueprint.get("/")
def index():
    return upload_page()


def upload_page(refused_files: Sequence[RefusedFile] = (), status: int = 200):
    settings = current_app.extensions["whisper_settings"]
    models = current_app.extensions["whisper_service"].models
    choices = model_menu.menu(models)
    return render_template(
        "index.html", settings=settings, models=choices,
        # "Try it" on the Models page links here with ?model=NAME chosen
        default_model=request.args.get("model") if request.args.get("model") in models.allowed
        else model_menu.selected(models, choices),
        stand_in_notice=models.stand_in_notice, presets=PRESETS, default_preset=DEFAULT_PRESET,
        defaults=TranscribeOptions(), refused=refused_files,
        languages=sorted(LANGUAGES.items(), key=lambda item: item[1]),
    ), status


@blueprint.get("/live")
def live():
    """Live captions: the page streams the microphone's or a tab's sound to /api/live and shows
    the text as it comes; the model, language and task are chosen as on the upload page."""
    models = current_app.extensions["whisper_service"].models
    choices = model_menu.menu(models)
    return render_template(
        "live.html", models=choices, default_model=model_menu.selected(models, choices),
        stand_in_notice=models.stand_in_notice, socket_path=request.script_root + "/api/live",
        languages=sorted(LANGUAGES.items(), key=lambda item: item[1]),
    )


@blueprint.post("/jobs")
@streams_uploads
def submit():
    files = [media for media in request.files.getlist("file") if media.filename]
    if not files:
        raise BadOption("file", "choose an audio or video file to upload")
    options = form_options()
    created: List[Job] = []
    refusals: List[tuple] = []  # (RefusedFile, the error)
    for media in files:
        name = clean_filename(media.filename)
        try:
            created.append(jobs().submit(media.stream, media.filename, options))
        except MediaError as error:
            refusals.append((refused(name, error), error))
        except QueueFull as error:
            if not created:
                raise
            refusals.append((RefusedFile(name, QUEUE_FULL_WORDS.format(name=name), None), error))
    refused_files = [file for file, _ in refusals]
    if not created:
        return upload_page(refused_files, status_of(refusals[0][1]))
    remember(job.id for job in created)
    if refused_files:
        return batch_page(created, refused_files)
    if len(created) == 1:
        return redirect(url_for("pages.job_page", job_id=created[0].id), code=303)
    return redirect(url_for("pages.batch", job=[job.id for job in created]), code=303)


def form_options() -> TranscribeOptions:
    # a checkbox sends a hidden "false" first and "true" after it when ticked: the last wins
    form = {name: request.form.getlist(name)[-1] for name in OPTION_NAMES if name in request.form}
    return TranscribeOptions.from_mapping(apply_preset(request.form.get("preset", ""), form))


def remember(job_ids) -> None:
    session["jobs"] = [*job_ids, *session.get("jobs", [])][:RECENT_JOBS_KEPT]


@blueprint.get("/jobs/batch")
def batch():
    """The jobs of one upload of several files, listed together."""
    return batch_page(jobs().list(request.args.getlist("job")), ())


def batch_page(batch_jobs: Sequence[Job], refused_files: Sequence[RefusedFile]):
    ordered = sorted(batch_jobs, key=lambda job: job.created_at)
    return render_template("batch.html", jobs=ordered, refused=refused_files,
                           waiting=any(not job.finished for job in ordered))


@blueprint.get("/jobs")
def recent():
    settings = current_app.extensions["whisper_settings"]
    listed = jobs().list(session.get("jobs", []))
    return render_template("jobs.html", jobs=listed, retention=retention_words(settings.retention_hours),
                           waiting=any(not job.finished for job in listed))


@blueprint.get("/jobs/<job_id>")
def job_page(job_id: str):
    job = _job(job_id)
    if request.args.get("mine") and job.id not in session.get("jobs", []):
        remember([job.id])  # a live session's job, opened from the live page
    transcript = jobs().transcript(job.id) if job.state == "done" else None
    return render_template(
        "job.html", job=job, transcript=transcript, formats=FORMATS,
        wait_seconds=jobs().expected_wait(job.position),
        language=language_name(transcript.language) if transcript else None,
        media_type=media_type(job), playable=media_type(job) in PLAYABLE_TYPES,
        edited=transcript is not None and jobs().is_edited(job.id), unsure=UNSURE_PROBABILITY,
    )


@blueprint.post("/jobs/<job_id>/speakers")
def rename_speakers(job_id: str):
    """Names for the speakers of a done job ("Speaker 1" -> "Ana"), saved with it: the page
    and every download use them. A plain form post, so it works without JavaScript."""
    job = _job(job_id)
    transcript = jobs().transcript(job.id)
    if transcript is None or not transcript.speakers:
        raise BadOption("speakers", "this job has no speakers to rename")
    names = {}
    for speaker in transcript.speakers:
        given = request.form.get(SPEAKER_FIELD + speaker.id)
        if given is not None:
            names[speaker.id] = speaker_name(given) or speaker.name
    jobs().rename_speakers(job.id, names)
    return redirect(url_for("pages.job_page", job_id=job_id) + "#speakers", code=303)


def speaker_name(given: str) -> str:
    """A name as typed, on one line, without control characters, at most MAX_SPEAKER_NAME."""
    cleaned = "".join(c if c.isprintable() else " " for c in given)
    name = " ".join(cleaned.split())
    if len(name) > MAX_SPEAKER_NAME:
        raise BadOption("speakers", f"a name has at most {MAX_SPEAKER_NAME} characters; "
                        f"{name[:20]!r}… has {len(name)}")
    return name


@blueprint.app_template_global()
def speaker_colour(transcript, speaker_id) -> int:
    """The colour class number of a speaker: its place in the transcript's list."""
    ids = [s.id for s in transcript.speakers]
    return ids.index(speaker_id) % SPEAKER_COLOURS if speaker_id in ids else 0


@dataclass(frozen=True)
class ModelShown:
    """The model line of a done job's facts."""

    label: str  # the model that made the transcript, as people know it
    stood_in_for: Optional[str]  # the model the job asked for, when another one ran instead
    why: str  # why, after "which": "could not be loaded here", "cannot translate"


@blueprint.app_template_global()
def model_shown(job: Job, transcript) -> ModelShown:
    """Which model made the transcript, and whether it stood in for the one chosen."""
    models = current_app.extensions["whisper_service"].models
    chosen = job.options.model or models.default
    made_by = transcript.model
    if made_by == chosen:
        return ModelShown(models.label(made_by), None, "")
    why = ("cannot translate" if transcript.task == "translate" and made_by == models.translate_model
           else "could not be loaded here")
    return ModelShown(models.label(made_by), models.label(chosen), why)


@blueprint.get("/jobs/<job_id>/status")
def status(job_id: str):
    job = _job(job_id)
    return jsonify(
        state=job.state.value, label=state_words(job), progress=job.progress,
        eta_seconds=job.eta_seconds, position=job.position, error=job.error,
        cancelling=cancelling(job), wait_seconds=jobs().expected_wait(job.position),
    )


@blueprint.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    jobs().cancel(_job(job_id).id)
    return redirect(url_for("pages.job_page", job_id=job_id), code=303)


@blueprint.post("/jobs/<job_id>/delete")
def delete(job_id: str):
    """A finished job goes at once; a queued or running one after the person confirms."""
    job = _job(job_id)
    if not job.finished and request.form.get("confirm") != "yes":
        return render_template("confirm_delete.html", job=job)
    jobs().delete(job.id)
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


def cancelling(job: Job) -> bool:
    """Cancel was asked for and the job has not stopped yet."""
    return job.cancel_requested and not job.finished


@blueprint.app_template_global()
def state_words(job: Job) -> str:
    """A job's state as a person says it."""
    if cancelling(job):
        return "Cancelling…"
    if job.state == "queued":
        return f"Waiting: number {job.position} in the queue"
    if job.state == "running":
        return "Transcribing…"  # the percentage is the bar's, shown once beside it
    return job.state.value.capitalize()


def retention_words(hours: float) -> str:
    """168 -> '7 days', 36 -> '36 hours'."""
    if hours % HOURS_PER_DAY == 0:
        days = int(hours // HOURS_PER_DAY)
        return f"{days} day" if days == 1 else f"{days} days"
    return f"{hours:g} hour" if hours == 1 else f"{hours:g} hours"


@blueprint.app_template_filter("isotime")
def isotime(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@blueprint.app_template_filter("isodatetime")
def isodatetime(timestamp: float) -> str:
    """For <time datetime>: the browser shows it in its own time zone."""
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


@blueprint.app_template_filter("clock")
def clock(seconds: float) -> str:
    """1:02:05 or 2:05: a position in the recording."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


blueprint.add_app_template_filter(format_duration, "duration")


@blueprint.app_template_filter("about")
def about(seconds: float) -> str:
    """An estimate in whole seconds: '40 s', '2 min 5 s'."""
    return format_duration(round(seconds)) if seconds >= 60 else f"{max(1, round(seconds))} s"


def media_type(job: Job) -> str:
    """What the upload's content is; jobs from before content types were kept are unknown."""
    return job.media_type or UNKNOWN_MEDIA_TYPE


def _job(job_id: str) -> Job:
    job = jobs().get(job_id)
    if job is None:
        abort(404)
    return job
