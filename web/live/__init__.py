"""Live captions over WebSockets: the connection loop both protocols share (connection.py),
the native protocol at /api/live (native.py) and OpenAI Realtime at /v1/realtime
(realtime.py), served by a WebSocket server with a bounded inbox (socket.py)."""

from __future__ import annotations

import threading

from web.live import native, realtime  # noqa: F401  (their routes join the blueprint)
from web.live.connection import MAX_MESSAGE_BYTES, PING_SECONDS, blueprint
from whisper_service.live.scheduler import LiveScheduler


def register(app) -> None:
    """The live blueprint (both protocols), its WebSocket options, and the process's
    scheduler."""
    from whisper_service.live.decoder import WhisperDecoder

    settings = app.extensions["whisper_settings"]
    app.config.setdefault("SOCK_SERVER_OPTIONS", {
        "max_message_size": MAX_MESSAGE_BYTES, "ping_interval": PING_SECONDS})
    if settings.role != "web" and settings.live_sessions:
        app.extensions["whisper_live"] = LiveScheduler(
            WhisperDecoder(app.extensions["whisper_service"].models), settings.live_sessions)
        if settings.preload:
            threading.Thread(target=WhisperDecoder.warm_up, name="live-warm-up",
                             daemon=True).start()
    app.register_blueprint(blueprint)
