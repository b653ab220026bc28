"""A fleet on one machine, with faults: two web hosts and four worker processes on one
PostgreSQL and one SeaweedFS (WHISPER_OBJECT_STORE), 500 short jobs, while workers are
killed with SIGKILL at random (and started again), PostgreSQL restarts once and the object
store stops once. It prints jobs done, done twice (must be 0), lost (must be 0), orphaned
objects (must be 0) and the queue wait's p50 and p99.

    .venv/bin/python bench/fleet.py [--jobs 500] [--workers 4] [--seed 26]
    (also: .venv/bin/python bench/many_hosts.py --fleet)

Each process is a real host's queue code (jobs.JobQueue on the PostgreSQL store with
objects.ObjectFiles) in a process of its own; the model is a stand-in that answers after
JOB_SECONDS, so what is measured is the queue, the stores and the faults, not a GPU. A web
host here submits through JobQueue.submit (what the upload views call), retrying an upload
the store refused with 503 as a client told Retry-After would; a job counts as submitted
once submit() returned its id.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from whisper_service.errors import StoreUnavailable  # noqa: E402
from whisper_service.options import TranscribeOptions  # noqa: E402
from whisper_service.queue.jobs import JobQueue, QueueFull  # noqa: E402
from whisper_service.queue.store import open_store  # noqa: E402
from whisper_service.transcript import Transcript  # noqa: E402

OPTIONS = TranscribeOptions(temperature=(0.0,), beam_size=None, language="en")
JOB_SECONDS = 0.05  # the stand-in model's time per job
LEASE_SECONDS = 3.0  # short: a killed worker's job runs again soon
KILL_EVERY = (3.0, 8.0)  # seconds between SIGKILLs of a random worker (one starts in ~3 s)
POSTGRES_RESTART_AT = 5.0  # seconds after the first job was submitted
OBJECT_STORE_STOP_AT, OBJECT_STORE_AWAY = 15.0, 10.0  # (the hosts take a while to start)
FINISH_TIMEOUT = 600.0
UPLOAD = b"\x00" * 4096  # what each job uploads


class StandIn:
    """A model that answers after JOB_SECONDS."""

    def check_upload(self, path, options, display_name=None):
        return None

    def prefetch(self, path, display_name=None):
        return None

    def share_key(self, options):
        return None

    def transcribe_file(self, path, options, *, display_name=None, progress=None):
        time.sleep(JOB_SECONDS)
        return Transcript(task="transcribe", language="en", language_probability=1.0,
                          duration=0.5, model="stand-in", text=display_name or "")


def _queue(url: str, objects: str, root: str) -> JobQueue:
    return JobQueue(open_store(url, root, objects), StandIn(), lease_seconds=LEASE_SECONDS,
                    max_queued=100000)


def run_worker(url: str, objects: str, root: str) -> None:
    """A GPU host's consumer, until killed."""
    while True:  # a store away at start: as a pod would, try again
        try:
            queue = _queue(url, objects, root)
            break
        except StoreUnavailable:
            time.sleep(1.0)
    queue.start()
    while True:
        time.sleep(60)


def run_web(url: str, objects: str, root: str, jobs: int, rate: float, out: str) -> None:
    """A web host: submit jobs at rate per second; each id written to out once accepted."""
    while True:
        try:
            queue = _queue(url, objects, root)
            break
        except StoreUnavailable:
            time.sleep(1.0)
    refused = 0
    with open(out, "a") as ids:
        for n in range(jobs):
            while True:
                try:
                    job = queue.submit(io.BytesIO(UPLOAD), f"{os.getpid()}-{n}.wav", OPTIONS)
                    break
                except (StoreUnavailable, QueueFull):
                    refused += 1  # a 503: the client waits and sends it again
                    time.sleep(1.0)
            ids.write(job.id + "\n")
            ids.flush()
            time.sleep(1.0 / rate)
        ids.write(json.dumps({"refused": refused}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--webs", type=int, default=2)
    parser.add_argument("--rate", type=float, default=3.0, help="jobs per second per web host")
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--no-kills", action="store_true", help="the baseline: no SIGKILLs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    random.seed(args.seed)

    from postgres import Cluster
    from seaweed import BUCKET, Seaweed

    folder = tempfile.mkdtemp(prefix="bench-fleet-")
    cluster, s3 = Cluster(), Seaweed()
    os.environ.update(s3.environment())
    url, objects = cluster.url(), f"s3://{BUCKET}/fleet"
    this = os.path.abspath(__file__)
    processes: list = []

    def spawn(*argv: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, this, *argv], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    try:
        _queue(url, objects, os.path.join(folder, "setup")).store.close()  # the schema
        workers = [spawn("_worker", url, objects, os.path.join(folder, f"worker-{n}"))
                   for n in range(args.workers)]
        outs = [os.path.join(folder, f"web-{n}.ids") for n in range(args.webs)]
        per_web = [args.jobs // args.webs + (n < args.jobs % args.webs) for n in range(args.webs)]
        webs = [spawn("_web", url, objects, os.path.join(folder, f"web-{n}"), str(per_web[n]),
                      str(args.rate), outs[n]) for n in range(args.webs)]
        processes = workers + webs
        start, wall_start = time.monotonic(), time.time()
        faults = {}  # what happened when, in seconds from the start
        kills = restarted = stopped = 0
        next_kill = start + random.uniform(*KILL_EVERY)
        store = open_store(url, os.path.join(folder, "observer"), objects)
        first = None  # when the first job was submitted: the faults are timed from it
        while True:
            now = time.monotonic() - start
            if first is None and any(os.path.exists(o) and os.path.getsize(o) for o in outs):
                first = now
            since = now - first if first is not None else -1.0
            if not restarted and since >= POSTGRES_RESTART_AT:
                faults["PostgreSQL restarted"] = now
                cluster.restart()
                restarted = 1
            if not stopped and since >= OBJECT_STORE_STOP_AT:
                s3.stop()
                faults["object store stopped"] = now
                time.sleep(OBJECT_STORE_AWAY)
                s3.start()
                faults["object store back"] = time.monotonic() - start
                stopped = 1
            if not args.no_kills and time.monotonic() >= next_kill:
                n = random.randrange(len(workers))
                workers[n].send_signal(signal.SIGKILL)
                workers[n].wait()
                workers[n] = spawn("_worker", url, objects, os.path.join(folder, f"worker-{n}"))
                processes = workers + webs
                kills += 1
                next_kill = time.monotonic() + random.uniform(*KILL_EVERY)
            if all(web.poll() is not None for web in webs) and restarted and stopped:
                try:
                    counts = store.counts()
                except StoreUnavailable:
                    counts = {"queued": 1}
                if not counts.get("queued") and not counts.get("running"):
                    break
                if now > FINISH_TIMEOUT:
                    print("gave up waiting for the queue to empty", counts)
                    break
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        report(store, s3, outs, kills, elapsed, args, faults, wall_start)
    finally:
        for process in processes:
            process.kill()
            process.wait()
        s3.destroy()
        cluster.destroy()


def report(store, s3, outs, kills, elapsed, args, faults, wall_start) -> None:
    submitted, refused = [], 0
    for out in outs:
        with open(out) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    refused += json.loads(line)["refused"]
                elif line:
                    submitted.append(line)
    rows = {row["id"]: row for row in store.list(submitted)}
    done = [rows[i] for i in submitted if i in rows and rows[i]["state"] == "done"]
    failed = [i for i in submitted if i in rows and rows[i]["state"] == "failed"]
    lost = [i for i in submitted if i not in rows or rows[i]["state"] not in ("done", "failed")]
    done_twice = int(store.counters()["jobs_done"]) - len(done)
    keys = s3.keys("fleet/")
    by_job: dict = {}
    for key in keys:
        job_id, name = key[len("fleet/"):].split("/", 1)
        by_job.setdefault(job_id, set()).add(name)
    orphaned = [job_id for job_id in by_job if job_id not in rows]
    missing = [row["id"] for row in done if by_job.get(row["id"]) != {"media", "transcript.json"}]
    waits = sorted(row["started_at"] - row["created_at"] for row in done)
    attempts = [row["attempts"] for row in done]
    print(f"{len(submitted)} jobs submitted ({refused} uploads refused with 503 and sent again), "
          f"{args.workers} workers, {args.webs} web hosts, {elapsed:.0f} s")
    print(f"faults: {kills} workers killed with SIGKILL, PostgreSQL restarted once, "
          f"the object store stopped once for {OBJECT_STORE_AWAY:.0f} s")
    print(f"done {len(done)}  failed {len(failed)}  done twice {done_twice}  lost {len(lost)}  "
          f"orphaned objects {len(orphaned)} jobs  done without their objects {len(missing)}")
    if done:
        created = [row["created_at"] - wall_start for row in done]
        print(f"submissions from {min(created):.0f} s to {max(created):.0f} s; "
              + ", ".join(f"{name} at {at:.0f} s" for name, at in faults.items()))
    print(f"jobs run more than once (a worker killed under them) {sum(a > 1 for a in attempts)}")
    if waits:
        print(f"queue wait (submit to the start of the last attempt): p50 "
              f"{1000 * statistics.median(waits):.0f} ms  p99 "
              f"{1000 * waits[min(len(waits) - 1, int(0.99 * len(waits)))]:.0f} ms")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        run_worker(*sys.argv[2:5])
    elif len(sys.argv) > 1 and sys.argv[1] == "_web":
        run_web(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]),
                sys.argv[7])
    else:
        main()
