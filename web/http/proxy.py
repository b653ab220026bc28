"""nginx in front of gunicorn: slow clients meet nginx, never an app thread.

gunicorn's threads read requests with blocking calls, so a client that sends its headers or
body a line at a time holds a thread for as long as it likes, and twenty such clients hold
them all (gunicorn's own deployment advice: put a buffering proxy in front). The server
master (gunicorn.conf.py) therefore starts nginx as its child: nginx listens on
WHISPER_HOST:WHISPER_PORT, reads every request whole (headers within
HEADER_TIMEOUT_SECONDS, a body that never pauses longer than BODY_TIMEOUT_SECONDS, spooled to
disk) and only then hands it to gunicorn on a unix socket in a private folder; answers are
buffered the same way. nginx's own messages become JSON log lines like everything else.

`WHISPER_PROXY=off` serves straight from gunicorn, for a host that already has such a proxy
in front (it must buffer requests as nginx does).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import Callable, Optional

log = logging.getLogger("whisper_service.proxy")

NGINX = "nginx"
HEADER_TIMEOUT_SECONDS = 10  # a request's line and headers arrive within this
BODY_TIMEOUT_SECONDS = 60  # the longest pause between two reads of a request body
SEND_TIMEOUT_SECONDS = 60  # the longest pause of a client reading an answer
KEEPALIVE_SECONDS = 5  # an idle kept-alive connection is closed after this
GUNICORN_KEEPALIVE_SECONDS = 5  # gunicorn closes a connection from nginx idle this long
# nginx drops its idle connections to gunicorn a second sooner, so that it never sends a
# request on one gunicorn is closing (which nginx would answer 502)
UPSTREAM_IDLE_SECONDS = GUNICORN_KEEPALIVE_SECONDS - 1
LIVE_IDLE_SECONDS = 90  # a live WebSocket with no frame either way this long is closed (pings come every 20 s)
UPLOAD_SLACK_MB = 8  # multipart framing and form fields on top of the largest file
STOP_SECONDS = 10  # nginx's graceful stop, then it is killed
SOCKET_NAME = "app.sock"
PR_SET_PDEATHSIG = 1  # prctl option: a signal for the child when its parent dies

# what nginx answers itself, in the shape each part of the site speaks (web/http/errors.py)
_TOO_LARGE = "The file is larger than this server accepts ({mb} MB)."
_TIMEOUT = "The request was not sent in time; send it again without long pauses."


@dataclass(frozen=True)
class ProxyConfig:
    host: str  # where clients connect
    port: int
    upstream_socket: str  # gunicorn's unix socket
    folder: str  # nginx's pid file, spooled bodies and config live here
    max_upload_mb: int  # WHISPER_MAX_UPLOAD_MB; the app checks the exact limit
    read_timeout: float  # how long nginx waits for an answer (synchronous calls wait long)


def _error_body(code: str, message: str) -> tuple:
    """The (native, OpenAI) JSON bodies of an error nginx answers itself."""
    native = {"error": {"code": code, "message": message, "field": None}}
    openai = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                        "code": code}}
    return json.dumps(native), json.dumps(openai)


def _nginx_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render(config: ProxyConfig) -> str:
    """nginx.conf for these settings."""
    listen = f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}"
    large_native, large_openai = _error_body(
        "request_entity_too_large", _TOO_LARGE.format(mb=config.max_upload_mb))
    slow_native, slow_openai = _error_body("request_timeout", _TIMEOUT)
    folder = config.folder
    return f"""# written by the server at start-up; see web/http/proxy.py
daemon off;
worker_processes 2;
pid {folder}/nginx.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
    server_tokens off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    # gunicorn logs every request it answers; nginx logs only those it answered itself
    map $upstream_status $answered_here {{ "" 1; default 0; }}
    log_format json escape=json '{{"time":"$time_iso8601","remote":"$remote_addr",'
        '"method":"$request_method","path":"$uri","status":"$status",'
        '"bytes":"$body_bytes_sent","ms":"$request_time","by":"proxy"}}';
    access_log /dev/stdout json if=$answered_here;
    client_header_timeout {HEADER_TIMEOUT_SECONDS}s;
    client_body_timeout {BODY_TIMEOUT_SECONDS}s;
    send_timeout {SEND_TIMEOUT_SECONDS}s;
    keepalive_timeout {KEEPALIVE_SECONDS}s;
    client_max_body_size {config.max_upload_mb + UPLOAD_SLACK_MB}m;
    client_body_buffer_size 1m;
    large_client_header_buffers 4 16k;
    # a TLS proxy in front says https; the app believes it only from a trusted proxy
    # (web/http/forwarded.py), which it tells by the address nginx adds to X-Forwarded-For
    map $http_x_forwarded_proto $forwarded_proto {{ "" $scheme; default $http_x_forwarded_proto; }}
    map $uri $too_large_body {{
        ~^/v1/ {_nginx_string(large_openai)};
        default {_nginx_string(large_native)};
    }}
    map $uri $too_slow_body {{
        ~^/v1/ {_nginx_string(slow_openai)};
        default {_nginx_string(slow_native)};
    }}
    upstream app {{
        server unix:{config.upstream_socket};
        keepalive 16;
        keepalive_timeout {UPSTREAM_IDLE_SECONDS}s;
    }}
    server {{
        listen {listen} reuseport;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $forwarded_proto;
            proxy_request_buffering on;
            proxy_buffering on;
            proxy_read_timeout {int(config.read_timeout)}s;
            proxy_send_timeout 60s;
        }}
        # live captions' WebSockets: passed through as they are, both ways at once; the
        # server pings every 20 s, so a long silence is not an idle connection
        location ~ ^/(api/live|v1/realtime)$ {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $forwarded_proto;
            proxy_buffering off;
            proxy_read_timeout {LIVE_IDLE_SECONDS}s;
            proxy_send_timeout {LIVE_IDLE_SECONDS}s;
        }}
        error_page 413 @too_large;
        error_page 408 @too_slow;
        location @too_large {{
            default_type application/json;
            add_header x-should-retry false always;
            return 413 $too_large_body;
        }}
        location @too_slow {{
            default_type application/json;
            return 408 $too_slow_body;
        }}
    }}
}}
"""


def nginx_path() -> Optional[str]:
    return shutil.which(NGINX) or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def _parent_death_signal() -> Optional[Callable[[], None]]:
    """A function for the child before exec that asks for SIGTERM when its parent dies
    (Linux's prctl), loaded here in the parent; None where there is no such call."""
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Proxy:
    """nginx as a child process: started, its messages logged, stopped with the server."""

    def __init__(self, config: ProxyConfig, on_death: Callable[[int], None]):
        self.config = config
        self.on_death = on_death  # called with nginx's exit code if it dies on its own
        self.process: Optional[subprocess.Popen] = None
        self._stopping = False

    def start(self) -> None:
        binary = nginx_path()
        if binary is None:
            raise RuntimeError("nginx is not installed")
        path = os.path.join(self.config.folder, "nginx.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(self.config))
        check = subprocess.run([binary, "-t", "-q", "-p", self.config.folder, "-c", path,
                                "-e", "stderr"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused its configuration: {check.stderr.strip()}")
        self.process = subprocess.Popen(
            [binary, "-p", self.config.folder, "-c", path, "-e", "stderr"],
            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
            # its own session: a terminal's Ctrl-C reaches the server, which stops nginx
            # after its workers; and nginx goes when the server dies, even by SIGKILL
            start_new_session=True, preexec_fn=_parent_death_signal(),
        )
        threading.Thread(target=self._relay, name="nginx-log", daemon=True).start()
        log.info("nginx (pid %s) listens on %s:%s", self.process.pid, self.config.host,
                 self.config.port)

    def _relay(self) -> None:
        """nginx's error log as JSON lines; its death, unless asked for, stops the server."""
        for raw in iter(self.process.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                log.warning("nginx: %s", line)
        code = self.process.wait()
        if not self._stopping:
            log.error("nginx exited with code %s; stopping the server", code)
            self.on_death(code)

    def stop(self) -> None:
        self._stopping = True
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
        try:
            self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
