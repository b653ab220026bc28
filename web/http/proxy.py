"""nginx in front of gunicorn: slow clients meet nginx, never an app thread.

gunicorn's threads read requests with blocking calls, so a client that sends its headers or
body a line at a time holds a thread for as long as it likes, and twenty such clients hold
them all (gunicorn's own deployment advice: put a buffering proxy in front). The server
master (gunicorn.conf.py) therefore starts nginx as its child: nginx listens on
WHISPER_HOST:WHISPER_PORT, reads every request whole (headers within
HEADER_TIMEOUT_SECONDS, a body that never pauses longer than BODY_TIMEOUT_SECONDS, spooled to
disk) and only then hands it to gunicorn on a unix socket in a private folder; answers are
buffered the same way. nginx's own messages become JSON log lines like everything else.

It takes in at most WHISPER_MAX_UPLOADS upload bodies at once (so at most that many are on
its disk) and refuses one more from its headers, 503 with Retry-After. What it answers
itself (that 503, 502 while gunicorn is away, 504, 413, 408) is JSON in the API's error
shape on API paths and a short page elsewhere (own_answers).

`WHISPER_PROXY=off` serves straight from gunicorn, for a host that already has such a proxy
in front (it must buffer requests as nginx does).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import html
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

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

UPLOAD_BODY_BYTES = 1_000_000  # a body this large (or chunked) is an upload: it counts
UPLOADS_RETRY_SECONDS = 10  # what a client refused for want of an upload place is told
RESTART_RETRY_SECONDS = 5  # what a client is told while gunicorn is not answering
PAGE_KIND, NATIVE_KIND, OPENAI_KIND = "page", "native", "openai"
# the paths whose errors are JSON (web/http/errors.py): OpenAI's shape under /v1/, ours on
# the native API, SageMaker's and the probes; every other path is a page, answered in HTML
OPENAI_PATHS = r"^/v1/"
NATIVE_PATHS = r"^/(api/|invocations|ping|healthz|readyz|metrics)"


@dataclass(frozen=True)
class ProxyConfig:
    host: str  # where clients connect
    port: int
    upstream_socket: str  # gunicorn's unix socket
    folder: str  # nginx's pid file, spooled bodies and config live here
    max_upload_mb: int  # WHISPER_MAX_UPLOAD_MB; the app checks the exact limit
    read_timeout: float  # how long nginx waits for an answer (synchronous calls wait long)
    # WHISPER_MAX_UPLOADS: upload bodies (UPLOAD_BODY_BYTES or more, or chunked) taken in
    # at once, from the first byte until the app's answer; more are answered 503 at once.
    # nginx keeps at most this many bodies of up to max_upload_mb + UPLOAD_SLACK_MB on disk
    max_uploads: int = 16
    body_timeout: float = BODY_TIMEOUT_SECONDS  # the longest pause within a request body
    # with an object store (WHISPER_OBJECT_STORE) the app streams an upload to it as it
    # arrives (web/http/streaming.py): nginx then passes bodies through as they come
    # (proxy_request_buffering off; 1 MB in memory at a time) rather than spool each one
    # whole to its disk first. max_uploads and body_timeout still bound the slow senders
    stream_bodies: bool = False


@dataclass(frozen=True)
class OwnAnswer:
    """An error nginx answers itself, without the app, in the shape each part of the site
    speaks: JSON in the API's error shape on API paths, a page elsewhere."""

    status: int
    code: str  # the error's code, as the app names its own ("too_many_uploads")
    message: str  # one sentence for people
    retry_after: Optional[int] = None  # seconds, sent as Retry-After
    hopeless: bool = False  # OpenAI's clients are told not to send the request again


def own_answers(config: "ProxyConfig") -> Tuple[OwnAnswer, ...]:
    """Everything nginx may answer itself for these settings."""
    return (
        OwnAnswer(413, "request_entity_too_large",
                  f"The file is larger than this server accepts ({config.max_upload_mb} MB).",
                  hopeless=True),
        OwnAnswer(408, "request_timeout",
                  "The request was not sent in time; send it again without long pauses."),
        OwnAnswer(503, "too_many_uploads",
                  f"The server is taking in {config.max_uploads} uploads at once, as many as it "
                  f"accepts; try again in {UPLOADS_RETRY_SECONDS} s.",
                  retry_after=UPLOADS_RETRY_SECONDS),
        OwnAnswer(502, "bad_gateway",
                  "The server is starting or restarting and cannot answer yet; try again in "
                  f"{RESTART_RETRY_SECONDS} s.", retry_after=RESTART_RETRY_SECONDS),
        OwnAnswer(504, "gateway_timeout",
                  "The server did not answer in time. For a long file, send it with 'Prefer: "
                  "respond-async' to POST /api/v1/transcriptions and poll the job.",
                  hopeless=True),
    )


def _bodies(answer: OwnAnswer) -> Dict[str, str]:
    """The body of an answer for each kind of path."""
    native = {"error": {"code": answer.code, "message": answer.message, "field": None}}
    kind = "server_error" if answer.status >= 500 else "invalid_request_error"
    openai = {"error": {"message": answer.message, "type": kind, "param": None,
                        "code": answer.code}}
    page = ("<!doctype html><html lang=\"en\"><meta charset=\"utf-8\">"
            f"<title>Error {answer.status}</title><h1>Sorry, that did not work</h1>"
            f"<p class=\"error\" role=\"alert\">{html.escape(answer.message)}</p>"
            f"<p>Error {answer.status}. <a href=\"/\">Back to the upload page</a></p></html>")
    return {OPENAI_KIND: json.dumps(openai), NATIVE_KIND: json.dumps(native), PAGE_KIND: page}


def _nginx_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _answer_maps(config: ProxyConfig) -> str:
    """nginx maps: the kind of a request's path, and for each answer its body by kind."""
    lines = [
        "map $uri $answer_kind {",
        f"    ~{OPENAI_PATHS} {OPENAI_KIND};",
        f"    ~{NATIVE_PATHS} {NATIVE_KIND};",
        f"    default {PAGE_KIND};",
        "}",
        "map $answer_kind $answer_type {",
        f"    {PAGE_KIND} 'text/html; charset=utf-8';",
        "    default application/json;",
        "}",
    ]
    for answer in own_answers(config):
        bodies = _bodies(answer)
        lines.append(f"map $answer_kind $answer_{answer.status} {{")
        lines += [f"    {kind} {_nginx_string(body)};" for kind, body in bodies.items()]
        lines.append("}")
    return "\n".join("    " + line for line in lines)


def _answer_locations(config: ProxyConfig) -> str:
    """error_page and a named location for each answer nginx gives itself. Only its own:
    the app's answers pass as they are (proxy_intercept_errors stays off)."""
    lines = []
    for answer in own_answers(config):
        lines.append(f"error_page {answer.status} @answer_{answer.status};")
    for answer in own_answers(config):
        lines += [
            f"location @answer_{answer.status} {{",
            '    default_type "";',
            "    add_header Content-Type $answer_type always;",
        ]
        if answer.retry_after is not None:
            lines.append(f"    add_header Retry-After {answer.retry_after} always;")
        if answer.hopeless:
            lines.append("    add_header x-should-retry false always;")
        lines += [f"    return {answer.status} $answer_{answer.status};", "}"]
    return "\n".join("        " + line for line in lines)


def render(config: ProxyConfig) -> str:
    """nginx.conf for these settings."""
    listen = f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}"
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
    client_body_timeout {config.body_timeout:g}s;
    send_timeout {SEND_TIMEOUT_SECONDS}s;
    keepalive_timeout {KEEPALIVE_SECONDS}s;
    client_max_body_size {config.max_upload_mb + UPLOAD_SLACK_MB}m;
    client_body_buffer_size 1m;
    large_client_header_buffers 4 16k;
    # a TLS proxy in front says https; the app believes it only from a trusted proxy
    # (web/http/forwarded.py), which it tells by the address nginx adds to X-Forwarded-For
    map $http_x_forwarded_proto $forwarded_proto {{ "" $scheme; default $http_x_forwarded_proto; }}
    # an upload: a body of UPLOAD_BODY_BYTES or more, or one of unknown length (chunked);
    # at most max_uploads at once, counted from its headers until the app's answer, so
    # one past it is refused before a byte of its body is read (or spooled to disk)
    map "$content_length:$http_transfer_encoding" $upload_body {{
        default "";
        "~^[0-9]{{{len(str(UPLOAD_BODY_BYTES))},}}:" upload;
        "~:.+$" upload;
    }}
    limit_conn_zone $upload_body zone=uploads:1m;
    limit_conn_status 503;
    limit_conn_log_level warn;  # below error_log's level: the access log has each refusal
{_answer_maps(config)}
    upstream app {{
        server unix:{config.upstream_socket};
        keepalive 16;
        keepalive_timeout {UPSTREAM_IDLE_SECONDS}s;
    }}
    server {{
        listen {listen} reuseport;
        location / {{
            limit_conn uploads {config.max_uploads};
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $forwarded_proto;
            proxy_request_buffering {"off" if config.stream_bodies else "on"};
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
{_answer_locations(config)}
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
