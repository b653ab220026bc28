"""gunicorn settings: the one way the app runs in production (container, README, CI).

    gunicorn -c gunicorn.conf.py

Each worker process owns one model on one device and one job consumer; HTTP runs on
threads, so uploads, status polls and /healthz stay responsive while the GPU works.
Clients meet nginx, which the master starts as its child (web/http/proxy.py): it reads each
request whole before a gunicorn thread sees it, so slow clients cannot hold the threads.
Settings read here (besides the app's WHISPER_* variables): WHISPER_HOST, WHISPER_PORT,
WHISPER_PROXY, WHISPER_DEVICES, WHISPER_WORKERS, WHISPER_THREADS, WHISPER_GRACEFUL_TIMEOUT.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from gunicorn.glogging import Logger

from web.http import proxy
from web.http.intake import UPLOADS_BESIDE_WAITERS

HOST = os.environ.get("WHISPER_HOST", "0.0.0.0")
PORT = int(os.environ.get("WHISPER_PORT", "8000"))
# nginx (default): nginx in front; off: gunicorn answers clients itself, for a host that
# already puts a buffering proxy in front
PROXY = os.environ.get("WHISPER_PROXY", "nginx").strip().lower()
PROXY_CHOICES = ("nginx", "off")
SERVER_LOGGER = "whisper_service.server"  # this file's own log lines (its module is "__config__")
# seconds a proxied request may wait for its answer beyond the synchronous APIs' wait
PROXY_READ_SLACK = 60
# run in a child process: CUDA initialised in the master would be unusable after fork, and
# the master stays free of torch. It checks every WHISPER_* setting (a bad one stops the
# server here, with its sentence) and counts the GPUs.
_PROBE = """
import json, sys, torch
from whisper_service.config import ConfigError, Settings
try:
    settings = Settings.from_env()
except ConfigError as error:
    sys.exit(f"error: {error}")
print(json.dumps({"gpus": torch.cuda.device_count(), "max_upload_mb": settings.max_upload_mb,
                  "sync_wait": max(settings.sync_timeout, settings.sync_limit),
                  "sync_waiters": settings.sync_waiters, "live_sessions": settings.live_sessions,
                  "max_uploads": settings.max_uploads,
                  "object_store": bool(settings.object_store)}))
"""


def _probe() -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        sys.exit(lines[-1] if lines else f"error: the settings check failed ({done.returncode})")
    return json.loads(done.stdout)


FACTS = _probe()
if PROXY not in PROXY_CHOICES:
    sys.exit(f"error: WHISPER_PROXY must be one of {', '.join(PROXY_CHOICES)}; got {PROXY!r}")
if PROXY == "nginx" and proxy.nginx_path() is None:
    sys.exit("error: nginx is not installed; it stands in front of the app so that slow "
             "clients cannot hold its threads. Install it (apt-get install nginx), or set "
             "WHISPER_PROXY=off when a buffering proxy of your own is in front.")
# the folder of nginx's config and gunicorn's socket: one per server (master pid)
PROXY_FOLDER = os.path.join(tempfile.gettempdir(), f"whisper-proxy-{os.getpid()}")


def _devices():
    """WHISPER_DEVICES=cuda:0,cuda:1, or every visible GPU, or the CPU."""
    listed = [d.strip() for d in os.environ.get("WHISPER_DEVICES", "").split(",") if d.strip()]
    if listed:
        return listed
    return [f"cuda:{i}" for i in range(FACTS["gpus"])] if FACTS["gpus"] else ["cpu"]


DEVICES = _devices()

wsgi_app = "app:create_app()"
if PROXY == "nginx":
    bind = [f"unix:{os.path.join(PROXY_FOLDER, proxy.SOCKET_NAME)}"]
else:
    bind = [f"{HOST}:{PORT}"]
# one worker (one model, one consumer) per GPU so throughput grows with GPUs
workers = int(os.environ.get("WHISPER_WORKERS", str(len(DEVICES))))
worker_class = "gthread"
# threads never taken by synchronous calls waiting for a transcript (WHISPER_SYNC_WAITERS)
# or by live sessions (WHISPER_LIVE_SESSIONS, one thread each): health checks, status polls
# and uploads always find one
MIN_FREE_THREADS = 4
HELD_THREADS = FACTS["sync_waiters"] + FACTS["live_sessions"]
threads = int(os.environ.get("WHISPER_THREADS", str(HELD_THREADS + MIN_FREE_THREADS)))
if threads < HELD_THREADS + MIN_FREE_THREADS:
    sys.exit(f"error: WHISPER_THREADS ({threads}) must be at least WHISPER_SYNC_WAITERS "
             f"({FACTS['sync_waiters']}) + WHISPER_LIVE_SESSIONS ({FACTS['live_sessions']}) + "
             f"{MIN_FREE_THREADS}, so that health checks and uploads find a thread while "
             "synchronous calls and live sessions hold theirs")
# upload bodies nginx takes in at once (WHISPER_MAX_UPLOADS); by default as many as the
# workers take in (web/http/intake.py): each its synchronous waiters and two more
MAX_UPLOADS = FACTS["max_uploads"] or workers * (FACTS["sync_waiters"] + UPLOADS_BESIDE_WAITERS)
# CUDA cannot be used across fork: each worker imports the app and loads its model after it
preload_app = False
# the model runs in the job consumer, not in a request, so a worker's heartbeat stays fresh;
# long uploads are streamed by the threads without tripping this
timeout = 120
keepalive = proxy.GUNICORN_KEEPALIVE_SECONDS  # nginx's idle connections to us end sooner
# on SIGTERM: stop taking work, let the running job finish within this many seconds;
# one still running is left for the next start, which queues it again
graceful_timeout = int(os.environ.get("WHISPER_GRACEFUL_TIMEOUT", "60"))
# no request body or header limits of gunicorn's own beyond the app's WHISPER_MAX_UPLOAD_MB
limit_request_line = 8190

# X-Forwarded-Proto is the app's to judge (web/http/forwarded.py, WHISPER_TRUSTED_PROXIES):
# gunicorn would believe it from any process on the unix socket or loopback
secure_scheme_headers = {}

# gunicorn's control socket lives in $HOME; the service needs none, and a read-only home
# (containers) or two servers on one host would trip over it
control_socket_disable = True



class JsonAccessLogger(Logger):
    """The access log as one JSON object per line: every field is encoded by json, so a
    path with an encoded newline or NUL cannot split or forge a line."""

    def access(self, resp, req, environ, request_time):
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.logconfig_dict):
            return
        atoms = self.atoms(resp, req, environ, request_time)
        forwarded = environ.get("HTTP_X_FORWARDED_FOR", "")
        entry = {
            "time": atoms["t"], "remote": forwarded.split(",")[0].strip() or atoms["h"],
            "method": atoms["m"], "path": atoms["U"], "status": atoms["s"],
            "bytes": atoms["B"], "ms": atoms["M"], "pid": os.getpid(),
        }
        try:
            self.access_log.info(json.dumps(entry))
        except Exception:
            self.error("Failed to log the request", exc_info=True)


logger_class = JsonAccessLogger
accesslog = "-"
errorlog = "-"
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "whisper_service.logs.JsonFormatter"}},
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
        # the access log is JSON already (JsonAccessLogger)
        "access": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
    },
    "root": {"level": "INFO", "handlers": ["stdout"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
    },
}


_proxy = None


def on_starting(server):
    """Start nginx in front, before gunicorn binds its socket (nginx answers 502 until)."""
    global _proxy
    if PROXY != "nginx":
        return
    shutil.rmtree(PROXY_FOLDER, ignore_errors=True)  # left by a server killed with this pid
    os.makedirs(PROXY_FOLDER, mode=0o755)  # nginx's workers may run as another user
    _proxy = proxy.Proxy(
        proxy.ProxyConfig(
            host=HOST, port=PORT, upstream_socket=bind[0][len("unix:"):], folder=PROXY_FOLDER,
            max_upload_mb=FACTS["max_upload_mb"],
            read_timeout=FACTS["sync_wait"] + PROXY_READ_SLACK, max_uploads=MAX_UPLOADS,
            stream_bodies=FACTS["object_store"],
        ),
        # nginx gone means no client can reach us: stop, so a supervisor restarts us whole
        on_death=lambda code: os.kill(os.getpid(), signal.SIGTERM),
    )
    try:
        _proxy.start()
    except RuntimeError as error:
        shutil.rmtree(PROXY_FOLDER, ignore_errors=True)
        sys.exit(f"error: {error}")


def on_exit(server):
    if _proxy is not None:
        _proxy.stop()
        shutil.rmtree(PROXY_FOLDER, ignore_errors=True)


def pre_fork(server, worker):
    """Give the new worker a device no live worker holds (a replaced worker inherits one)."""
    taken = {getattr(w, "device", None) for w in server.WORKERS.values()}
    free = [d for d in DEVICES if d not in taken]
    worker.device = free[0] if free else DEVICES[len(server.WORKERS) % len(DEVICES)]


def post_fork(server, worker):
    os.environ["WHISPER_DEVICE"] = worker.device
    server.log.info("worker %s uses %s", worker.pid, worker.device)


def worker_exit(server, worker):
    """Graceful stop: no new jobs; the running one finishes or is requeued at next start."""
    app = getattr(worker, "wsgi", None)
    jobs = getattr(app, "extensions", {}).get("whisper_jobs") if app else None
    if jobs is not None:
        jobs.stop(timeout=max(0, graceful_timeout - 5))
    logging.getLogger(SERVER_LOGGER).info("worker %s stopped", worker.pid)
