"""Every error a client can cause becomes a page with its status code and one clear sentence."""

from __future__ import annotations

from flask import Flask, render_template
from werkzeug.exceptions import HTTPException

from whisper_service import errors as service_errors
from whisper_service.jobs import QueueFull

# the HTTP status of each kind of service error; the most specific class wins
STATUS_OF = {
    service_errors.BadOption: 400,
    service_errors.MediaTooLarge: 413,
    service_errors.NotMedia: 415,
    service_errors.RefusedFormat: 415,
    service_errors.EmptyMedia: 422,
    service_errors.NoAudioStream: 422,
    service_errors.TruncatedMedia: 422,
    service_errors.MediaTooLong: 422,
    service_errors.DecodeTimeout: 422,
    service_errors.ModelUnavailable: 503,
    QueueFull: 503,
}


def status_of(error: service_errors.ServiceError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return 400


def register(app: Flask) -> None:
    @app.errorhandler(service_errors.ServiceError)
    def service_error(error: service_errors.ServiceError):
        status = status_of(error)
        response = app.make_response(
            (render_template("error.html", status=status, message=str(error)), status)
        )
        if isinstance(error, QueueFull):
            response.headers["Retry-After"] = str(int(error.retry_after))
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        message = error.description
        if error.code == 413:
            limit_mb = app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)
            message = f"The file is larger than this server accepts ({limit_mb} MB)."
        elif error.code == 404:
            message = "There is no such page or transcript."
        return render_template("error.html", status=error.code, message=message), error.code
