"""Uploads written where the job store keeps them as their bytes arrive (an object store),
never whole on this host's disk nor in its memory.

A view that makes jobs is marked @streams_uploads: werkzeug then parses each file of its
form straight into a new upload target of the app's job queue (JobQueue.open_upload(): a
multipart upload to S3 that buffers one part), whoever reads the form first (the CSRF
check does, before the view), and the view hands the FileStorage's stream to
JobQueue.submit() as ever. A raw body (SageMaker's /invocations) is copied into one by
streamed_body(). Where the store keeps uploads on this host (SQLite, PostgreSQL rows)
open_upload() offers none and nothing changes: werkzeug spools the file as it always did.

Every target a request opened and no job kept is aborted when the request ends: the client
went away, the body was too large (413), the file was not media, or the store stopped
answering in the middle (503): what went up is removed, or left to the store's
retention pass when the store cannot take the abort either.
"""

from __future__ import annotations

import shutil
from typing import IO, Callable, List, Optional

from flask import Flask, current_app, request

from whisper_service.errors import ServiceError
from whisper_service.queue.jobs import COPY_CHUNK, JobQueue
from whisper_service.queue.store.spool import UploadTarget

TARGETS = "whisper.upload_targets"  # environ: the targets this request opened
MARK = "streams_uploads"  # the attribute of a view function whose form files stream
JOBS = "whisper_jobs"  # the app's JobQueue, in app.extensions


def streams_uploads(view: Callable) -> Callable:
    """Mark a view: its form's files stream into the job queue's upload targets."""
    setattr(view, MARK, True)
    return view


def streamed_body(queue: JobQueue) -> Optional[UploadTarget]:
    """The current request's raw body, written into a new upload target as it is read; None
    where the queue's store keeps uploads on this host (read the body as before). werkzeug's
    stream stops at the upload limit with 413, declared or chunked."""
    target = queue.open_upload()
    if target is None:
        return None
    _opened(target)
    shutil.copyfileobj(request.stream, target, COPY_CHUNK)
    return target


def _opened(target: UploadTarget) -> None:
    request.environ.setdefault(TARGETS, []).append(target)


def register(app: Flask) -> None:
    """Give the app's request class the hook werkzeug asks for a form file's stream, and
    abort, when a request ends, every target it opened that no job kept."""
    base = app.request_class

    class StreamingRequest(base):  # type: ignore[valid-type, misc]
        def _get_file_stream(self, total_content_length: Optional[int],
                             content_type: Optional[str], filename: Optional[str] = None,
                             content_length: Optional[int] = None) -> IO[bytes]:
            view = current_app.view_functions.get(self.endpoint or "")
            target = None
            if getattr(view, MARK, False) and filename:  # an empty file field is no upload
                try:
                    target = current_app.extensions[JOBS].open_upload()
                except ServiceError:  # queue full, disk full, store away: submit() says so
                    target = None
            if target is None:
                return super()._get_file_stream(total_content_length, content_type, filename,
                                                content_length)
            self.environ.setdefault(TARGETS, []).append(target)
            return target  # type: ignore[return-value]

    StreamingRequest.__name__ = StreamingRequest.__qualname__ = f"Streaming{base.__name__}"
    app.request_class = StreamingRequest

    @app.teardown_request
    def abort_what_no_job_kept(_error) -> None:
        targets: List[UploadTarget] = request.environ.pop(TARGETS, [])
        for target in targets:
            target.abort()
