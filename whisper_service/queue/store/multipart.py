"""An upload streamed to S3 as it arrives: one part buffered in memory at a time.

MultipartUpload is the UploadTarget (spool.py) of objects.ObjectFiles. Bytes collect in a
buffer of one part (objects.MULTIPART_BYTES, 8 MB; S3's smallest part but the last is
5 MB); each full part goes up at once as a part of an S3 multipart upload, started with the
first full part; the buffer itself goes up (no copy), and a new one starts. So the web
host holds about one part in memory (9.7 MB measured, tests/test_jobs_store.py) and writes
nothing to its disk, whatever the upload's size; a client sending faster than the store
takes waits (TCP's own back-pressure).

finish() sends the rest as the last part and completes the upload; an upload smaller than
one part goes up as one PUT. abort() aborts the multipart upload (its parts go) or removes
the finished object. A store that does not answer raises StoreUnavailable from write() or
finish() (the web answers 503 with Retry-After); an abort the store does not take then
leaves a multipart upload that ObjectFiles.collect_strays() aborts once it is older than
its stray age, as it removes objects no row names.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

from whisper_service.queue.store.base import MEDIA_FILE
from whisper_service.queue.store.spool import RemoteMedia, UploadTarget

log = logging.getLogger(__name__)

PROBE_URL_SECONDS = 600  # how long the media check's URL of a finished upload is good for


class MultipartUpload(UploadTarget):
    """A job's upload (MEDIA_FILE) going up to its object as it arrives."""

    def __init__(self, files, job_id: str, part_bytes: int):
        super().__init__(job_id)
        self._files = files  # the ObjectFiles this upload belongs to
        self._part_bytes = part_bytes
        self._buffer = bytearray()
        self._upload_id: Optional[str] = None  # the multipart upload, once a part went
        self._parts: List[Dict[str, object]] = []  # {"PartNumber", "ETag"} of parts sent
        self._finished = False  # the whole object is there
        self.peak_buffered = 0  # the most bytes buffered at once (for tests and measures)

    @property
    def key(self) -> str:
        return self._files.key(self.job_id, MEDIA_FILE)

    def _take(self, data: bytes) -> None:
        if self._finished:
            raise ValueError("the upload is finished; nothing more can be written")
        self._buffer += data
        self.peak_buffered = max(self.peak_buffered, len(self._buffer))
        while len(self._buffer) >= self._part_bytes:
            # the buffer itself goes up as the part (no copy of 8 MB); what came past the
            # part's end (less than one write) starts the next buffer
            part, self._buffer = self._buffer, self._buffer[self._part_bytes:]
            del part[self._part_bytes:]
            self._send(part)

    def _send(self, part: bytearray) -> None:
        client, bucket = self._files._client, self._files.where.bucket
        with self._files._reaching():
            if self._upload_id is None:
                started = client.create_multipart_upload(Bucket=bucket, Key=self.key)
                self._upload_id = started["UploadId"]
            number = len(self._parts) + 1
            sent = client.upload_part(Bucket=bucket, Key=self.key, UploadId=self._upload_id,
                                      PartNumber=number, Body=part)
            self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def finish(self) -> RemoteMedia:
        if not self._finished:
            client, bucket = self._files._client, self._files.where.bucket
            rest = self._buffer
            if self._upload_id is None:  # smaller than one part: one PUT
                with self._files._reaching():
                    client.put_object(Bucket=bucket, Key=self.key, Body=rest)
            else:
                if rest:
                    self._send(rest)
                with self._files._reaching():
                    client.complete_multipart_upload(
                        Bucket=bucket, Key=self.key, UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts})
            self._buffer = bytearray()
            self._finished = True
        return RemoteMedia(self._files.presigned_url(self.key, PROBE_URL_SECONDS), self.size,
                           self.head)

    def abort(self) -> None:
        self._buffer = bytearray()
        if self.kept:
            return
        client, bucket = self._files._client, self._files.where.bucket
        try:
            if self._finished:
                client.delete_object(Bucket=bucket, Key=self.key)
            elif self._upload_id is not None:
                client.abort_multipart_upload(Bucket=bucket, Key=self.key,
                                              UploadId=self._upload_id)
        except Exception as error:  # the store away: its retention pass collects it
            log.warning("the upload of job %s stays in the object store until its retention "
                        "pass: %s", self.job_id, type(error).__name__)
        self._upload_id = None
