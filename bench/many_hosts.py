"""Many hosts on one machine: one worker process against two on the same PostgreSQL, and
the queue's own cost per job (submit to claim) on each store.

    .venv/bin/python bench/many_hosts.py [--jobs 40] [--overhead-jobs 200]
    .venv/bin/python bench/many_hosts.py --fleet [bench/fleet.py's options]

--fleet runs bench/fleet.py instead: two web hosts and four workers on PostgreSQL and an
object store, with workers killed, the database restarted and the object store stopped.

Makes its own PostgreSQL cluster (as the tests do: Debian's postgresql package), a tiny
seeded model, and a half-second clip that the batched engine finishes in milliseconds (no
speech, no window), so what is measured is the queue, the file transfers and ffmpeg, not
the model. On a 2-core machine two CPU workers compete for the cores: the ratio says how
little the queue itself holds them back, not what two GPU hosts would do.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from postgres import Cluster  # noqa: E402  (the tests' cluster helper)
from whisper_service.queue.jobs import JobQueue  # noqa: E402
from whisper_service.options import TranscribeOptions  # noqa: E402
from whisper_service.queue.store import open_store  # noqa: E402
from whisper_service.synthetic import make_checkpoint  # noqa: E402
from whisper_service.transcript import Transcript  # noqa: E402

FIELDS = TranscribeOptions(mode="batched", temperature=(0.0,), beam_size=None, language="en")


class Instant:
    """A service that answers at once: only the queue is left to measure."""

    def check_upload(self, path, options, display_name=None):
        return None

    def prefetch(self, path, display_name=None):
        return None

    def share_key(self, options):
        return None

    def transcribe_file(self, path, options, *, display_name=None, progress=None):
        return Transcript(task="transcribe", language="en", language_probability=1.0,
                          duration=0.5, model="instant", text="")


def overhead(url: str, root: str, jobs: int) -> dict:
    """Submit jobs one at a time to an idle consumer: submit-to-claim latency."""
    queue = JobQueue(open_store(url, root), Instant())
    queue.start()
    latencies = []
    try:
        for n in range(jobs):
            job = queue.submit(io.BytesIO(b"x" * 1024), f"{n}.wav", FIELDS)
            done = queue.wait(job.id, 30)
            latencies.append(done.started_at - done.created_at)
    finally:
        queue.stop(5)
        queue.store.close()
    latencies.sort()
    return {"median_ms": 1000 * statistics.median(latencies),
            "p90_ms": 1000 * latencies[int(0.9 * len(latencies))]}


def throughput(cluster: Cluster, schema: str, workers: int, jobs: int, clip: bytes,
               checkpoint: str, folder: str) -> float:
    cluster.admin(f"CREATE SCHEMA {schema}", database="whisper")
    url = cluster.url(schema=schema)
    env = {**os.environ, "WHISPER_DATABASE_URL": url, "WHISPER_MODEL": checkpoint,
           "WHISPER_DEVICE": "cpu", "WHISPER_MODEL_DIR": folder, "WHISPER_SHARED_JOBS": "1"}
    processes = [subprocess.Popen(
        [sys.executable, "-m", "whisper_service", "worker", "--devices", "cpu"], cwd=ROOT,
        env={**env, "WHISPER_DATA_DIR": os.path.join(folder, f"{schema}-{n}")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n in range(workers)]
    store = open_store(url, os.path.join(folder, f"{schema}-web"))
    queue = JobQueue(store, Instant(), max_queued=jobs + 1)
    try:
        while len(store.workers(60)) < workers:  # every worker up before the clock starts
            time.sleep(0.2)
        start = time.monotonic()
        ids = [queue.submit(io.BytesIO(clip), f"{n}.wav", FIELDS).id for n in range(jobs)]
        while not all(queue.get(i).finished for i in ids):
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        states = {queue.get(i).state.value for i in ids}
        assert states == {"done"}, states
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        store.close()
    return 60.0 * jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--overhead-jobs", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    folder = tempfile.mkdtemp(prefix="bench-many-hosts-")
    checkpoint = make_checkpoint(os.path.join(folder, "tiny-test.pt"))
    clip_path = os.path.join(folder, "tone.wav")
    from conftest import run_ffmpeg

    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", "-ar", "16000", clip_path)
    with open(clip_path, "rb") as f:
        clip = f.read()
    cluster = Cluster()
    try:
        cluster.admin("CREATE SCHEMA overhead", database="whisper")
        for name, url in (("sqlite", ""), ("postgres", cluster.url(schema="overhead"))):
            result = overhead(url, os.path.join(folder, f"overhead-{name}"), args.overhead_jobs)
            print(f"submit-to-claim {name:8}  median {result['median_ms']:.1f} ms  "
                  f"p90 {result['p90_ms']:.1f} ms  ({args.overhead_jobs} jobs)")
        one = throughput(cluster, "one", 1, args.jobs, clip, checkpoint, folder)
        two = throughput(cluster, "two", 2, args.jobs, clip, checkpoint, folder)
        print(f"jobs per minute   1 worker {one:.0f}   2 workers {two:.0f}   ratio {two / one:.2f}"
              f"  ({args.jobs} jobs each)")
    finally:
        cluster.destroy()


if __name__ == "__main__":
    if "--fleet" in sys.argv:
        import fleet

        sys.argv.remove("--fleet")
        fleet.main()
    else:
        main()
