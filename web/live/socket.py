"""The live WebSockets' server side: simple-websocket's, with a bounded inbox.

simple-websocket reads the socket in a thread of its own and keeps every message it has
read in a list until the view takes it: a client that sends faster than the view takes
messages grows that list without bound (a minute of audio frames in a tight loop grew a
worker by 730 MB). Here the list holds at most INBOX_MESSAGES messages; while it is full the
reading thread waits, so the socket is not read, the kernel's buffers fill and TCP slows the
client down. The view (LiveConnection) takes messages as fast as they come, dropping the
audio its Intake refuses, so the inbox is full only for moments and a `stop` behind audio
frames is read within them.

`route` is flask-sock's decorator with this server in place of its own (the WSGI servers
this app runs under: werkzeug's and gunicorn's).
"""

from __future__ import annotations

import threading
from functools import wraps
from typing import Any, Callable

from flask import Blueprint, Response, current_app, request
from simple_websocket import ConnectionClosed, Server

INBOX_MESSAGES = 8  # messages read and not yet taken, at most (each at most MAX_MESSAGE_BYTES)
INBOX_WAIT_SECONDS = 0.5  # a full inbox's reader looks this often whether the socket closed


class Inbox(list):
    """The messages read and not yet taken: append() waits while `limit` are held, pop()
    makes room. Once shut (the server closed the connection), append() raises OSError,
    which ends simple-websocket's reading thread (it would otherwise read on, or wait
    for room, for as long as the client kept the socket open)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self._shut = False
        self._room = threading.Condition()

    def append(self, message: Any) -> None:
        with self._room:
            while len(self) >= self.limit and not self._shut:
                self._room.wait(INBOX_WAIT_SECONDS)
            if self._shut:
                raise ConnectionAbortedError("the server closed this WebSocket")
            super().append(message)

    def shut(self) -> None:
        with self._room:
            self._shut = True
            self._room.notify_all()

    def pop(self, index: int = -1) -> Any:
        with self._room:
            message = super().pop(index)
            self._room.notify_all()
            return message


class BoundedServer(Server):
    """simple_websocket.Server whose inbox holds at most `inbox` messages."""

    def __init__(self, environ, inbox: int = INBOX_MESSAGES, **options: Any):
        self._inbox_limit = inbox
        super().__init__(environ, **options)

    # simple-websocket sets input_buffer to a list before its reading thread starts
    @property
    def input_buffer(self) -> Inbox:
        return self._inbox

    @input_buffer.setter
    def input_buffer(self, messages: list) -> None:
        self._inbox = Inbox(self._inbox_limit)
        self._inbox.extend(messages)

    def close(self, reason=None, message=None) -> None:
        try:
            super().close(reason=reason, message=message)
        finally:
            self._inbox.shut()


def route(path: str, bp: Blueprint) -> Callable:
    """A WebSocket view at `path` on `bp`, given a BoundedServer (options from the app's
    SOCK_SERVER_OPTIONS, as flask-sock reads them)."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def websocket_route(*args, **kwargs):
            ws = BoundedServer(request.environ, **current_app.config.get(
                "SOCK_SERVER_OPTIONS", {}))
            try:
                view(ws, *args, **kwargs)
            except ConnectionClosed:
                pass
            try:
                ws.close()
            except Exception:  # already closed
                pass

            class WebSocketResponse(Response):
                def __call__(self, *args, **kwargs):
                    if ws.mode == "gunicorn":
                        raise StopIteration()  # gunicorn: the socket was answered already
                    if ws.mode == "werkzeug":
                        return super().__call__(*args, **kwargs)
                    return []

            return WebSocketResponse()

        bp.route(path, websocket=True)(websocket_route)
        return view

    return decorator
