"""The queue's numbers in Prometheus' text format, for dashboards and autoscalers.

Everything is read from the store, so any web host answers for all hosts: jobs by state
(the queue depth a GPU autoscaler scales on), totals that only grow (jobs done, failed,
cancelled; audio and processing seconds), the workers heard from recently, and each
worker's GPU utilisation where its driver tells (NVML through torch).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("queued", "running", "done", "failed", "cancelled")
# (store counter, metric name, help)
TOTALS = (
    ("jobs_done", "whisper_jobs_done_total", "Jobs finished with a transcript."),
    ("jobs_failed", "whisper_jobs_failed_total", "Jobs that ended failed, after their last attempt."),
    ("jobs_cancelled", "whisper_jobs_cancelled_total", "Running jobs that stopped on a cancel."),
    ("audio_seconds", "whisper_audio_seconds_total", "Seconds of audio transcribed."),
    ("processing_seconds", "whisper_processing_seconds_total",
     "Seconds workers spent on jobs that finished with a transcript."),
)


def gpu_utilization(device: str) -> Optional[float]:
    """The GPU's busy fraction (0..1) over the driver's last sample period; None for the
    CPU, or where NVML is not there to ask."""
    if not device.startswith("cuda"):
        return None
    try:
        import torch

        index = int(device.partition(":")[2] or 0)
        return torch.cuda.utilization(index) / 100.0
    except Exception:  # no pynvml, no driver: unknown, not an error
        return None


def render(counts: Dict[str, int], totals: Dict[str, float],
           workers: List[Dict[str, object]], live: Optional[Tuple[int, int]] = None,
           disk: Optional[Tuple[int, int]] = None) -> str:
    """live: (sessions open, sessions taken at most) of this server process, where it takes
    live sessions. disk: (bytes free, the floor in bytes) of the data folder's disk."""
    lines: List[str] = []

    def metric(name: str, kind: str, text: str, samples: List[Tuple[str, float]]) -> None:
        lines.extend([f"# HELP {name} {text}", f"# TYPE {name} {kind}"])
        lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

    metric("whisper_jobs", "gauge", "Jobs in the store by state (queued is the queue depth).",
           [(f'{{state="{state}"}}', counts.get(state, 0)) for state in STATES])
    for counter, name, text in TOTALS:
        metric(name, "counter", text, [("", totals.get(counter, 0.0))])
    metric("whisper_workers", "gauge", "Job consumers heard from recently, on every host.",
           [("", len(workers))])
    metric("whisper_worker_running_jobs", "gauge", "Jobs each consumer is running.",
           [(_worker_labels(w), w["info"].get("running", 0)) for w in workers])
    metric("whisper_gpu_utilization_ratio", "gauge",
           "Busy fraction of each worker's GPU, where its driver tells.",
           [(_worker_labels(w), w["info"]["gpu_utilization"]) for w in workers
            if w["info"].get("gpu_utilization") is not None])
    if live is not None:
        metric("whisper_live_sessions", "gauge", "Live sessions open in this server process.",
               [("", live[0])])
        metric("whisper_live_sessions_limit", "gauge",
               "Live sessions this server process takes at once (WHISPER_LIVE_SESSIONS).",
               [("", live[1])])
    if disk is not None:
        metric("whisper_disk_free_bytes", "gauge",
               "Free space on the data folder's disk; uploads are refused below the floor.",
               [("", disk[0])])
        metric("whisper_disk_min_free_bytes", "gauge",
               "The free-space floor of the data folder's disk (WHISPER_MIN_FREE_MB).",
               [("", disk[1])])
    return "\n".join(lines) + "\n"


def _worker_labels(worker: Dict[str, object]) -> str:
    info = worker["info"]
    return (f'{{worker="{_escape(str(worker["name"]))}",host="{_escape(str(info.get("host", "")))}",'
            f'device="{_escape(str(info.get("device", "")))}"}}')


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)
