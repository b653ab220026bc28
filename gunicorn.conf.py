"""gunicorn settings: the one way the app runs in production (container, README, CI).

    gunicorn -c gunicorn.conf.py

Each worker process owns one model on one device and one job consumer; HTTP runs on
threads, so uploads, status polls and /healthz stay responsive while the GPU works.
Settings read here (besides the app's WHISPER_* variables): WHISPER_HOST, WHISPER_PORT,
WHISPER_DEVICES, WHISPER_WORKERS, WHISPER_THREADS, WHISPER_GRACEFUL_TIMEOUT.
"""

import json
import logging
import os
import subprocess
import sys

HOST = os.environ.get("WHISPER_HOST", "0.0.0.0")
PORT = int(os.environ.get("WHISPER_PORT", "8000"))


def _devices():
    """WHISPER_DEVICES=cuda:0,cuda:1, or every visible GPU, or the CPU."""
    listed = [d.strip() for d in os.environ.get("WHISPER_DEVICES", "").split(",") if d.strip()]
    if listed:
        return listed
    # counted in a child process: CUDA initialised in the master would be unusable after fork
    count = int(subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip() or 0)
    return [f"cuda:{i}" for i in range(count)] if count else ["cpu"]


DEVICES = _devices()

wsgi_app = "app:create_app()"
bind = [f"{HOST}:{PORT}"]
# one worker (one model, one consumer) per GPU so throughput grows with GPUs
workers = int(os.environ.get("WHISPER_WORKERS", str(len(DEVICES))))
worker_class = "gthread"
threads = int(os.environ.get("WHISPER_THREADS", "16"))
# CUDA cannot be used across fork: each worker imports the app and loads its model after it
preload_app = False
# the model runs in the job consumer, not in a request, so a worker's heartbeat stays fresh;
# long uploads are streamed by the threads without tripping this
timeout = 120
keepalive = 5
# on SIGTERM: stop taking work, let the running job finish within this many seconds;
# one still running is left for the next start, which queues it again
graceful_timeout = int(os.environ.get("WHISPER_GRACEFUL_TIMEOUT", "60"))
# no request body or header limits of gunicorn's own beyond the app's WHISPER_MAX_UPLOAD_MB
limit_request_line = 8190

# gunicorn's control socket lives in $HOME; the service needs none, and a read-only home
# (containers) or two servers on one host would trip over it
control_socket_disable = True

accesslog = "-"
errorlog = "-"
access_log_format = json.dumps({
    "time": "%(t)s", "remote": "%(h)s", "method": "%(m)s", "path": "%(U)s",
    "status": "%(s)s", "bytes": "%(B)s", "ms": "%(M)s", "pid": "%(p)s",
})
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "whisper_service.logs.JsonFormatter"}},
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
        # the access log is JSON already (access_log_format)
        "access": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
    },
    "root": {"level": "INFO", "handlers": ["stdout"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
    },
}


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
    logging.getLogger(__name__).info("worker %s stopped", worker.pid)
