"""The production server (gunicorn, nginx in front) with an object store: an upload goes
through nginx as it arrives (no request buffering) and on to S3 in parts, so no process
of the server writes it to disk: nginx's body spool, gunicorn's temporary files and the
data folder all stay empty, with a declared length and chunked alike (issue 26)."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from typing import Iterator, List


from seaweed import BUCKET
from server import Server, server_env
from test_upload_spool import FormBody, padded_wav

UPLOAD_BYTES = 100 * 1024 * 1024
# what the whole server (nginx and its workers, gunicorn's master and workers) may write
# to disk while taking in two 100 MB uploads: logs; the uploads are 200 MB
SERVER_DISK_WRITES = 8 * 1024 * 1024


def _tree(root: int) -> List[int]:
    """root and every process below it."""
    children: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _written(pids: List[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/io") as f:
                total += int(next(l for l in f if l.startswith("write_bytes:")).split()[1])
        except (OSError, StopIteration):
            pass
    return total


def _chunks(body: FormBody) -> Iterator[bytes]:
    while True:
        piece = body.read(1 << 20)
        if not piece:
            return
        yield piece


def test_nginx_and_gunicorn_pass_an_upload_to_the_store_without_a_disk(
        checkpoint, postgres_url, object_store, seaweed, media, tmp_path):
    env = server_env(checkpoint, tmp_path, WHISPER_ROLE="web", WHISPER_MAX_UPLOAD_MB="128",
                     WHISPER_DATABASE_URL=postgres_url, WHISPER_OBJECT_STORE=object_store)
    server = Server(env, tmp_path / "gunicorn.log").start()
    try:
        head, total = padded_wav(media["speech.wav"].read_bytes(), UPLOAD_BYTES)
        pids = _tree(server.process.pid)
        assert len(pids) >= 3, pids  # gunicorn's master and worker, nginx
        before = _written(pids)
        ids = []
        for chunked in (False, True):
            body = FormBody("long.wav", head, total - len(head))
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
            headers = {"Content-Type": body.content_type}
            if chunked:
                connection.request("POST", "/api/v1/transcriptions?async=1", body=_chunks(body),
                                   headers=headers, encode_chunked=True)
            else:
                headers["Content-Length"] = str(body.length)
                connection.request("POST", "/api/v1/transcriptions?async=1", body=body,
                                   headers=headers)
            answer = connection.getresponse()
            reply = json.loads(answer.read())
            assert answer.status == 202, reply
            ids.append(reply["id"])
        written = _written(pids) - before
        print(f"\ntwo {total / 2**20:.0f} MB uploads through nginx and gunicorn: the server "
              f"wrote {written / 2**20:.2f} MB to disk")
        assert written < SERVER_DISK_WRITES
        prefix = object_store.split(f"s3://{BUCKET}/", 1)[1]
        for job_id in ids:
            stored = seaweed.client().head_object(Bucket=BUCKET, Key=f"{prefix}/{job_id}/media")
            assert stored["ContentLength"] == total
        data = Path(env["WHISPER_DATA_DIR"])
        assert not [n for n in os.listdir(data) if len(n) == 22] if data.exists() else True
        # chunked, past the limit: 413 in the middle, and what went up is aborted
        head, total = padded_wav(media["speech.wav"].read_bytes(), 140 * 1024 * 1024)
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
        body = FormBody("too-long.wav", head, total - len(head))
        try:
            connection.request("POST", "/api/v1/transcriptions?async=1", body=_chunks(body),
                               headers={"Content-Type": body.content_type}, encode_chunked=True)
            answer = connection.getresponse()
            status, reply = answer.status, answer.read()
        except (BrokenPipeError, ConnectionResetError):  # answered before the body ended
            status, reply = 413, b"(the connection was closed after the answer)"
        print(f"too large, chunked: {status} {reply[:160]!r}")
        assert status == 413, reply
        uploads = seaweed.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix + "/")
        assert uploads.get("Uploads", []) == []
        assert sorted({k.split("/")[1] for k in seaweed.keys(prefix + "/")}) == sorted(ids)
    finally:
        server.stop()
