"""A job's files as objects in S3-compatible storage (WHISPER_OBJECT_STORE=s3://bucket/prefix):
PostgreSQL then keeps state, queue and leases only, and no host streams media through it.

Objects are named `<prefix><job id>/<file name>` (MEDIA_FILE, TRANSCRIPT_FILE, SIDE_FILES).
The endpoint, region and credentials come from where boto3 reads them (AWS_ENDPOINT_URL,
AWS_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an instance role), so an
S3 service, MinIO or SeaweedFS are set the same way. boto3 is imported only here, and this
module only when the setting is given.

- An upload streams up as it arrives (upload_target(): multipart.MultipartUpload, one
  MULTIPART_BYTES part buffered at a time, nothing on the web host's disk); a file already
  on disk (a live recording) goes up as a multipart upload read in MULTIPART_BYTES parts,
  a few at a time. Memory stays bounded whatever the size. Reads stream the body to the
  caller in COPY_CHUNK pieces; the media check reads a finished upload through a
  short-lived presigned URL (presigned_url()).
- A store that does not answer, or answers with server errors, raises StoreUnavailable
  (the web answers 503 with Retry-After, a worker waits and asks again), logged once per
  outage; a bucket that refuses the credentials at startup is a ConfigError naming the
  setting.
- An object is written before the row that names it commits; a crash in between leaves an
  object no row names, which collect_strays() removes once it is older than
  files.STRAY_SECONDS (the retention pass runs it); so are multipart uploads begun that
  long ago and never completed nor aborted (an upload cut off while the store was away).
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional
from urllib.parse import urlparse

from whisper_service.errors import ConfigError
from whisper_service.queue.store.base import COPY_CHUNK
from whisper_service.queue.store.blobs import JobFiles, Known
from whisper_service.queue.store.files import STRAY_SECONDS, valid_id
from whisper_service.queue.store.reachability import Reachability

log = logging.getLogger(__name__)

SETTING = "WHISPER_OBJECT_STORE"
MULTIPART_BYTES = 8 << 20  # an upload goes up in parts of this size ...
MULTIPART_THREADS = 2  # ... this many at a time: at most their product is in memory
CONNECT_TIMEOUT_SECONDS = 5  # a store that does not answer is "away", not a hang
READ_TIMEOUT_SECONDS = 60
ATTEMPTS = 2  # botocore's own tries of one call before it is StoreUnavailable
DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes
_REFUSED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403")
_MISSING = ("NoSuchKey", "404", "NotFound")


@dataclass(frozen=True)
class ObjectStoreURL:
    """WHISPER_OBJECT_STORE, parsed."""

    bucket: str  # the bucket, made beforehand by the operator
    prefix: str  # "" or a folder ending in "/": every object of this service is under it


def parse_url(url: str) -> ObjectStoreURL:
    """s3://bucket or s3://bucket/prefix; ConfigError naming the setting otherwise."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise ConfigError(f"{SETTING} must be an S3 URL like s3://bucket/prefix (the endpoint "
                          "and keys come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and "
                          f"AWS_SECRET_ACCESS_KEY); got {url!r}")
    prefix = parsed.path.strip("/")
    return ObjectStoreURL(parsed.netloc, f"{prefix}/" if prefix else "")


class ObjectFiles(JobFiles):
    """Job files in one bucket under one prefix. The db arguments are not used: nothing
    here is part of the database's transaction."""

    outside = True

    def __init__(self, url: str, stray_seconds: float = STRAY_SECONDS):
        self.where = parse_url(url)
        self.stray_seconds = stray_seconds  # an object no row names is debris this old
        try:
            import boto3
            from boto3.s3.transfer import TransferConfig
            from botocore.config import Config
        except ImportError:
            raise ConfigError(f"{SETTING} needs boto3: pip install boto3") from None
        self._config = Config(connect_timeout=CONNECT_TIMEOUT_SECONDS,
                              read_timeout=READ_TIMEOUT_SECONDS,
                              retries={"max_attempts": ATTEMPTS, "mode": "standard"})
        self._boto3 = boto3
        self._own: Optional[tuple] = None  # (pid, client): a forked child makes its own
        self._transfer = TransferConfig(multipart_threshold=MULTIPART_BYTES,
                                        multipart_chunksize=MULTIPART_BYTES,
                                        max_concurrency=MULTIPART_THREADS, use_threads=True)
        self._reach = Reachability("object store")

    # --- the interface ------------------------------------------------------------------

    def check(self) -> None:
        from botocore.exceptions import ClientError, NoCredentialsError

        bucket = self.where.bucket
        try:
            self._client.head_bucket(Bucket=bucket)
        except NoCredentialsError:
            raise ConfigError(f"{SETTING}: no credentials for the object store: set "
                              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
        except ClientError as error:
            code = _code(error)
            if code in _MISSING:
                raise ConfigError(f"{SETTING}: the bucket {bucket!r} does not exist") from None
            if code in _REFUSED:
                raise ConfigError(f"{SETTING}: the object store refused the key for bucket "
                                  f"{bucket!r} (check AWS_ACCESS_KEY_ID and "
                                  "AWS_SECRET_ACCESS_KEY)") from None
            with self._reaching():  # a server error: away, not misconfigured
                raise
        except Exception:
            with self._reaching():  # no answer: StoreUnavailable, as for the database
                raise

    def upload_target(self, job_id: str):
        from whisper_service.queue.store.multipart import MultipartUpload

        return MultipartUpload(self, job_id, MULTIPART_BYTES)

    def presigned_url(self, key: str, seconds: int) -> str:
        """A URL that reads the object `key` (GET, with Range) for `seconds`, no key needed."""
        with self._reaching():
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.where.bucket, "Key": key}, ExpiresIn=seconds)

    def put_path(self, db, job_id: str, name: str, path: str) -> None:
        with self._reaching():
            self._client.upload_file(path, self.where.bucket, self.key(job_id, name),
                                     Config=self._transfer)

    def put_text(self, db, job_id: str, name: str, text: str) -> None:
        with self._reaching():
            self._client.put_object(Bucket=self.where.bucket, Key=self.key(job_id, name),
                                    Body=text.encode("utf-8"),
                                    ContentType="application/json; charset=utf-8")

    def read(self, db, job_id: str, name: str, write: Callable[[bytes], object]) -> bool:
        with self._reaching():
            answer = self._get(job_id, name)
            if answer is None:
                return False
            body = answer["Body"]
            try:
                for piece in body.iter_chunks(COPY_CHUNK):
                    write(piece)
            finally:
                body.close()
        return True

    def exists(self, db, job_id: str, name: str) -> bool:
        from botocore.exceptions import ClientError

        with self._reaching():
            try:
                self._client.head_object(Bucket=self.where.bucket, Key=self.key(job_id, name))
            except ClientError as error:
                if _code(error) in _MISSING:
                    return False
                raise
        return True

    def remove(self, db, job_id: str, name: str) -> None:
        with self._reaching():
            self._client.delete_object(Bucket=self.where.bucket, Key=self.key(job_id, name))

    def remove_job(self, job_id: str) -> None:
        with self._reaching():
            keys = [item["Key"] for item in self._list(f"{self.where.prefix}{job_id}/")]
            self._delete(keys)

    def collect_strays(self, known: Known) -> int:
        newest: Dict[str, float] = {}  # job id -> its newest object's time
        keys: Dict[str, List[str]] = {}
        with self._reaching():
            for item in self._list(self.where.prefix):
                job_id = item["Key"][len(self.where.prefix):].split("/", 1)[0]
                if not valid_id(job_id):  # not ours
                    continue
                keys.setdefault(job_id, []).append(item["Key"])
                newest[job_id] = max(newest.get(job_id, 0.0), item["LastModified"].timestamp())
            cutoff = time.time() - self.stray_seconds
            old = [job_id for job_id, stamp in newest.items() if stamp < cutoff]
            strays = set(old) - set(known(old)) if old else set()
            for job_id in strays:
                log.warning("removing the objects of stray job %s", job_id)
                self._delete(keys[job_id])
            self._abort_stale_uploads(cutoff)
        return len(strays)

    def _abort_stale_uploads(self, cutoff: float) -> None:
        """Abort multipart uploads begun before cutoff and still open: an upload is
        completed or aborted within its request, so these were cut off (the store went away
        in the middle, and took no abort either). Their parts are not objects: without this
        they would stay, unlisted and billed, for good."""
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.where.bucket, Prefix=self.where.prefix)
        for page in pages:
            for upload in page.get("Uploads", ()):
                job_id = upload["Key"][len(self.where.prefix):].split("/", 1)[0]
                if not valid_id(job_id) or upload["Initiated"].timestamp() >= cutoff:
                    continue
                log.warning("aborting the unfinished upload of job %s", job_id)
                self._client.abort_multipart_upload(Bucket=self.where.bucket, Key=upload["Key"],
                                                    UploadId=upload["UploadId"])

    # --- inside -------------------------------------------------------------------------

    @property
    def _client(self):
        """This process's S3 client (thread-safe; a fork's parent's sockets are not ours)."""
        own = self._own
        if own is None or own[0] != os.getpid():
            own = (os.getpid(), self._boto3.session.Session().client("s3", config=self._config))
            self._own = own
        return own[1]

    def key(self, job_id: str, name: str) -> str:
        return f"{self.where.prefix}{job_id}/{name}"

    def _get(self, job_id: str, name: str) -> Optional[dict]:
        from botocore.exceptions import ClientError

        try:
            return self._client.get_object(Bucket=self.where.bucket, Key=self.key(job_id, name))
        except ClientError as error:
            if _code(error) in _MISSING:
                return None
            raise

    def _list(self, prefix: str) -> Iterator[dict]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.where.bucket, Prefix=prefix)
        for page in pages:
            yield from page.get("Contents", ())

    def _delete(self, keys: List[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            self._client.delete_objects(Bucket=self.where.bucket, Delete={
                "Objects": [{"Key": key} for key in batch], "Quiet": True})

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """Turn "the store does not answer" (no connection, a timeout, a 5xx, a refused key
        after startup) into StoreUnavailable; other errors pass as they are."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except NoCredentialsError:
            raise
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status >= 500:
                raise self._reach.unavailable("the object store answers with errors", error) from error
            if _code(error) in _REFUSED:
                raise self._reach.unavailable("the object store refuses our key", error) from error
            raise
        except (BotoCoreError, S3UploadFailedError, ConnectionError) as error:
            raise self._reach.unavailable("the object store does not answer", error) from error
        self._reach.answered()


def _code(error) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
