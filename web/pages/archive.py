"""One upload of several files, together: the batch page's heading says where its jobs
stand, and "Download all" gives one zip of every done transcript in the formats chosen.
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from typing import Dict, List, Sequence

from flask import Blueprint, Response, request

from web.http.downloads import attachment, download_stem
from web.http.signin import require_web_access
from web.pages.views import jobs
from whisper_service.errors import BadOption
from whisper_service.queue.jobs import Job
from whisper_service.writers import FORMATS, write

blueprint = Blueprint("archive", __name__)
blueprint.before_request(require_web_access)
ARCHIVE_NAME = "transcripts.zip"
DEFAULT_FORMATS = ("txt", "srt")  # ticked on the batch page
# how a job's state is counted in the heading, in the order the heading names them
STATE_WORDS = (("done", "done"), ("running", "transcribing"), ("queued", "waiting"),
               ("failed", "failed"), ("cancelled", "cancelled"))


@blueprint.app_template_global()
def batch_heading(batch: Sequence[Job]) -> str:
    """Where one upload's jobs stand: "3 files queued", "3 files: 1 done, 2 waiting",
    "3 files done"."""
    count = len(batch)
    files = f"{count} file" if count == 1 else f"{count} files"
    states = Counter(job.state.value for job in batch)
    if len(states) == 1:
        state = next(iter(states))
        return f"{files} {'queued' if state == 'queued' else dict(STATE_WORDS)[state]}"
    parts = [f"{states[state]} {words}" for state, words in STATE_WORDS if states[state]]
    return f"{files}: {', '.join(parts)}"


@blueprint.get("/jobs/batch/" + ARCHIVE_NAME)
def download_all():
    """?job=<id>&...&fmt=txt&fmt=srt: a zip of every done transcript of these jobs in each
    format, named after the uploads ('talk.srt'; 'talk (2).srt' for a second 'talk')."""
    formats = [fmt for fmt in dict.fromkeys(request.args.getlist("fmt")) if fmt]
    if not formats:
        raise BadOption("fmt", f"choose at least one format: {', '.join(FORMATS)}")
    for fmt in formats:
        if fmt not in FORMATS:
            raise BadOption("fmt", f"{fmt[:20]!r} is not a format; choose from {', '.join(FORMATS)}")
    done = [job for job in jobs().list(request.args.getlist("job")) if job.state == "done"]
    if not done:
        raise BadOption("job", "none of these jobs has a transcript yet")
    body = archive(sorted(done, key=lambda job: job.created_at), formats)
    response = Response(body, content_type="application/zip")
    response.headers["Content-Disposition"] = attachment(ARCHIVE_NAME)
    return response


def archive(done: Sequence[Job], formats: Sequence[str]) -> bytes:
    """The zip's bytes: each job's transcript (people's corrections included) in each format."""
    buffer = io.BytesIO()
    stems: Dict[str, int] = {}
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for job in done:
            transcript = jobs().transcript(job.id)
            if transcript is None:  # deleted meanwhile
                continue
            stem = _unique(download_stem(job), stems)
            for fmt in formats:
                out.writestr(f"{stem}.{fmt}", write(fmt, transcript, job.options.layout))
    return buffer.getvalue()


def _unique(stem: str, seen: Dict[str, int]) -> str:
    """stem, or 'stem (2)', 'stem (3)' for the next ones of the same name."""
    seen[stem] = seen.get(stem, 0) + 1
    return stem if seen[stem] == 1 else f"{stem} ({seen[stem]})"


@blueprint.app_template_global()
def archive_formats() -> List[tuple]:
    """(format, ticked at first) for the batch page's "Download all"."""
    return [(fmt, fmt in DEFAULT_FORMATS) for fmt in FORMATS]
