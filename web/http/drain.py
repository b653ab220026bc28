"""A request body the app did not read is read to its end before the answer goes out.

The app answers some requests without reading their bodies: a wrong API key (401), a
rate limit (429), a busy server (503), a full disk (507), a file past the size limit
(413). gunicorn then discards at most 64 KiB of what is left and closes the connection;
nginx, still sending the rest of a large body over that connection, meets a broken pipe
and answers 502 in place of the app's answer (about 1 POST in 40 of a few MB, measured).
Reading the rest here keeps the connection whole, so the client always gets the app's
answer. Behind nginx the body is already on this host (nginx reads it whole first), so
this costs milliseconds, never a wait on a client.
"""

from __future__ import annotations

from flask import Flask, Response, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream

CHUNK = 1 << 16  # bytes read at a time


def drain(limit_bytes: int) -> int:
    """Read what is left of the current request's body, at most limit_bytes (a body
    larger than that was refused by its Content-Length and closes the connection as
    before); returns the bytes read."""
    length = request.content_length
    if not length and "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
        return 0  # no body (GET, WebSocket upgrades): nothing to read, never a blocking read
    if length and length > limit_bytes:
        return 0
    raw = request.environ["wsgi.input"]
    try:
        stream = request.stream  # where the app stopped reading
    except RequestEntityTooLarge:  # refused by its declared length: none of it was read
        stream = LimitedStream(raw, length) if length else raw
    read = 0
    while read < limit_bytes:
        try:
            piece = stream.read(min(CHUNK, limit_bytes - read))
        except RequestEntityTooLarge:  # past the app's limit, length unknown (chunked)
            if not request.environ.get("wsgi.input_terminated"):
                break
            stream = raw  # the server ends it where the chunks end
            continue
        if not piece:
            break
        read += len(piece)
    return read


def register(app: Flask, limit_bytes: int) -> None:
    """Drain every request's unread body (up to limit_bytes) before its answer is sent."""

    @app.after_request
    def read_the_rest(response: Response) -> Response:
        try:
            drain(limit_bytes)
        except (OSError, ValueError, ClientDisconnected):  # the client went away: there is no one to answer
            pass
        return response
