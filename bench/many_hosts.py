"""Many hosts on one machine, on one PostgreSQL: the queue's cost and throughput, or a whole
fleet with faults.

    .venv/bin/python bench/many_hosts.py [--jobs 40] [--overhead-jobs 200]
    .venv/bin/python bench/many_hosts.py --fleet [--jobs 500] [--workers 4] [--webs 2] [--rate 3] [--seed 26] [--no-kills]

Both make their own PostgreSQL cluster (as the tests do: Debian's postgresql package) and
start every host as a process of its own (start_host).

Without --fleet: the queue's own cost per job (submit to claim) on each store, then one
worker process (`python -m whisper_service worker`) against two on the same PostgreSQL,
with a tiny seeded model and a half-second clip that the batched engine finishes in
milliseconds (no speech, no window), so what is measured is the queue, the file transfers
and ffmpeg, not the model. On a 2-core machine two CPU workers compete for the cores: the
ratio says how little the queue itself holds them back, not what two GPU hosts would do.

--fleet: two web hosts and four worker processes on one PostgreSQL and one SeaweedFS
(WHISPER_OBJECT_STORE), 500 short jobs, while workers are killed with SIGKILL at random (and
started again), PostgreSQL restarts once and the object store stops once. It prints jobs
done, done twice (must be 0), lost (must be 0), orphaned objects (must be 0) and the queue
wait's p50 and p99. Each host is a real host's queue code (jobs.JobQueue on the PostgreSQL
store with objects.ObjectFiles) in a process of its own; the model is a stand-in that
answers after JOB_SECONDS, so what is measured is the queue, the stores and the faults, not
a GPU. A web host submits through JobQueue.submit (what the upload views call), retrying an
upload the store refused with 503 as a client told Retry-After would; a job counts as
submitted once submit() returned its id.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from postgres import Cluster  # noqa: E402  (the tests' cluster helper)
from whisper_service.errors import StoreUnavailable  # noqa: E402
from whisper_service.options import TranscribeOptions  # noqa: E402
from whisper_service.queue.jobs import JobQueue, QueueFull  # noqa: E402
from whisper_service.queue.store import open_store  # noqa: E402
from whisper_service.synthetic import make_checkpoint  # noqa: E402
from whisper_service.transcript import Transcript  # noqa: E402

FIELDS = TranscribeOptions(mode="batched", temperature=(0.0,), beam_size=None, language="en")
OPTIONS = TranscribeOptions(temperature=(0.0,), beam_size=None, language="en")  # the fleet's jobs
JOB_SECONDS = 0.05  # the fleet's stand-in model's time per job
LEASE_SECONDS = 3.0  # short: a killed worker's job runs again soon
KILL_EVERY = (3.0, 8.0)  # seconds between SIGKILLs of a random worker (one starts in ~3 s)
POSTGRES_RESTART_AT = 5.0  # seconds after the first job was submitted
OBJECT_STORE_STOP_AT, OBJECT_STORE_AWAY = 15.0, 10.0  # (the hosts take a while to start)
FINISH_TIMEOUT = 600.0
UPLOAD = b"\x00" * 4096  # what each fleet job uploads


class StandIn:
    """A service that answers after `seconds` (0: at once): only the queue is left to measure."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds

    def check_upload(self, path, options, display_name=None):
        return None

    def prefetch(self, path, display_name=None):
        return None

    def share_key(self, options):
        return None

    def transcribe_file(self, path, options, *, display_name=None, progress=None):
        time.sleep(self.seconds)
        return Transcript(task="transcribe", language="en", language_probability=1.0,
                          duration=0.5, model="stand-in", text=display_name or "")


# --- hosts ---------------------------------------------------------------------------------

def start_host(argv: Sequence[str], env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """A host as a process of its own in the repository (its output dropped): `argv` after
    the interpreter, e.g. ("-m", "whisper_service", "worker") or this file's _worker."""
    return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_hosts(processes: List[subprocess.Popen], kill: bool = False) -> None:
    """End the hosts (SIGTERM, their graceful drain; kill: SIGKILL) and wait for them."""
    for process in processes:
        process.kill() if kill else process.terminate()
    for process in processes:
        process.wait(30)


def fleet_host(role: str, *argv: str) -> subprocess.Popen:
    """A fleet host: this file run as `_worker` or `_web` (see the bottom)."""
    return start_host([os.path.abspath(__file__), role, *argv])


def fleet_queue(url: str, objects: str, root: str) -> JobQueue:
    """A fleet host's queue, waiting (as a pod restarting would) while the stores are away."""
    while True:
        try:
            return JobQueue(open_store(url, root, objects), StandIn(JOB_SECONDS),
                            lease_seconds=LEASE_SECONDS, max_queued=100000)
        except StoreUnavailable:
            time.sleep(1.0)


def run_worker(url: str, objects: str, root: str) -> None:
    """A GPU host's consumer, until killed."""
    fleet_queue(url, objects, root).start()
    while True:
        time.sleep(60)


def run_web(url: str, objects: str, root: str, jobs: int, rate: float, out: str) -> None:
    """A web host: submit jobs at rate per second; each id written to out once accepted."""
    queue = fleet_queue(url, objects, root)
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


# --- the queue's cost and throughput -------------------------------------------------------

def overhead(url: str, root: str, jobs: int) -> dict:
    """Submit jobs one at a time to an idle consumer: submit-to-claim latency."""
    queue = JobQueue(open_store(url, root), StandIn())
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
    processes = [start_host(["-m", "whisper_service", "worker", "--devices", "cpu"],
                            {**env, "WHISPER_DATA_DIR": os.path.join(folder, f"{schema}-{n}")})
                 for n in range(workers)]
    store = open_store(url, os.path.join(folder, f"{schema}-web"))
    queue = JobQueue(store, StandIn(), max_queued=jobs + 1)
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
        stop_hosts(processes)
        store.close()
    return 60.0 * jobs / elapsed


def queue_bench(args) -> None:
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


# --- the fleet -----------------------------------------------------------------------------

def fleet_bench(args) -> None:
    random.seed(args.seed)
    from seaweed import BUCKET, Seaweed

    folder = tempfile.mkdtemp(prefix="bench-fleet-")
    cluster, s3 = Cluster(), Seaweed()
    os.environ.update(s3.environment())
    url, objects = cluster.url(), f"s3://{BUCKET}/fleet"
    processes: list = []
    try:
        fleet_queue(url, objects, os.path.join(folder, "setup")).store.close()  # the schema
        workers = [fleet_host("_worker", url, objects, os.path.join(folder, f"worker-{n}"))
                   for n in range(args.workers)]
        outs = [os.path.join(folder, f"web-{n}.ids") for n in range(args.webs)]
        per_web = [args.jobs // args.webs + (n < args.jobs % args.webs) for n in range(args.webs)]
        webs = [fleet_host("_web", url, objects, os.path.join(folder, f"web-{n}"), str(per_web[n]),
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
                stop_hosts([workers[n]], kill=True)
                workers[n] = fleet_host("_worker", url, objects, os.path.join(folder, f"worker-{n}"))
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
        stop_hosts(processes, kill=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", action="store_true",
                        help="the fleet with faults instead of the queue's cost and throughput")
    parser.add_argument("--jobs", type=int, help="jobs per run (default 40; --fleet: 500)")
    parser.add_argument("--overhead-jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4, help="--fleet: worker processes")
    parser.add_argument("--webs", type=int, default=2, help="--fleet: web hosts")
    parser.add_argument("--rate", type=float, default=3.0, help="--fleet: jobs per second per web host")
    parser.add_argument("--seed", type=int, default=26, help="--fleet: of the random kills")
    parser.add_argument("--no-kills", action="store_true", help="--fleet: the baseline, no SIGKILLs")
    args = parser.parse_args()
    args.jobs = args.jobs or (500 if args.fleet else 40)
    if args.fleet:
        logging.basicConfig(level=logging.ERROR)
        fleet_bench(args)
    else:
        logging.basicConfig(level=logging.WARNING)
        queue_bench(args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        run_worker(*sys.argv[2:5])
    elif len(sys.argv) > 1 and sys.argv[1] == "_web":
        run_web(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]),
                sys.argv[7])
    else:
        main()
