"""Where fine-tunes live (queue/finetune_store/), without training: the shared store on a real
PostgreSQL (files as rows, and as objects in a real S3 server) claims each fine-tune once,
hands one whose lease lapsed or that its runner released to the next runner (resume), tells
a runner of a DELETE at its next beat and one that lost its claim that it did, refuses a
name taken twice, and keeps and removes the files; the local store keeps today's folder."""

from __future__ import annotations

import time

import pytest

from whisper_service.config import Settings
from whisper_service.errors import BadOption
from whisper_service.queue.finetune_store import open_fine_tune_store
from whisper_service.queue.finetune_store.base import CANCEL, GO_ON, LOST

ID_A, ID_B = "A" * 22, "B" * 22


def record(fine_tune_id: str, name: str, created: float = 1.0) -> dict:
    return {"id": fine_tune_id, "name": name, "state": "queued", "step": 0, "created": created,
            "loss": None, "wer": None}


@pytest.fixture(params=["rows", "objects"])
def shared(request, postgres_url, tmp_path):
    object_store = request.getfixturevalue("object_store") if request.param == "objects" else ""
    store = open_fine_tune_store(Settings(database_url=postgres_url, object_store=object_store),
                                 str(tmp_path / "fine-tunes"))
    yield store
    store.close()


def archive(tmp_path, data: bytes = b"PK archive bytes"):
    path = tmp_path / "dataset.zip"
    path.write_bytes(data)
    return str(path)


def test_a_fine_tune_is_claimed_once_and_its_beats_hear_a_delete(shared, tmp_path):
    shared.add(record(ID_A, "first"), archive(tmp_path))
    shared.add(record(ID_B, "second", created=2.0), archive(tmp_path))
    with pytest.raises(BadOption, match="already a model named 'first'"):
        shared.add(record("C" * 22, "first", created=3.0), archive(tmp_path))
    assert [r["id"] for r in shared.list()] == [ID_A, ID_B]

    one = shared.claim("host-1", 30)
    two = shared.claim("host-2", 30)
    assert (one.record["id"], one.resume, two.record["id"]) == (ID_A, False, ID_B)
    assert shared.claim("host-3", 30) is None  # both are held
    assert shared.get(ID_A)["state"] == "running"
    one.record.update(step=3, loss=0.5)
    assert shared.write(one, one.record)
    assert shared.get(ID_A)["step"] == 3
    assert shared.beat(one, 30) == GO_ON

    assert shared.cancel(ID_A)["state"] == "running"  # a runner holds it: asked to stop
    assert shared.beat(one, 30) == CANCEL
    one.record["state"] = "cancelled"
    assert shared.write(one, one.record)
    shared.remove_files(ID_A)
    assert shared.get(ID_A)["state"] == "cancelled"
    assert not shared.fetch_file(ID_A, "dataset.zip", str(tmp_path / "gone.zip"))
    # the name of a cancelled fine-tune is free again
    shared.add(record("C" * 22, "first", created=3.0), archive(tmp_path))


def test_a_lapsed_or_released_claim_goes_to_the_next_runner_which_resumes(shared, tmp_path):
    shared.add(record(ID_A, "lapsing"), archive(tmp_path))
    dead = shared.claim("host-dead", 0.5)
    assert shared.claim("host-2", 30) is None
    time.sleep(1.0)  # its host died: the lease lapses
    taken = shared.claim("host-2", 30)
    assert taken.record["id"] == ID_A and taken.resume
    assert shared.beat(dead, 30) == LOST  # should it come back, it writes nothing more
    assert not shared.write(dead, {**dead.record, "step": 99})
    assert shared.get(ID_A)["step"] == 0

    shared.release(taken)  # its process stopped: at once to the next
    again = shared.claim("host-3", 30)
    assert again.record["id"] == ID_A and again.resume


def test_files_are_kept_replaced_and_removed(shared, tmp_path):
    shared.add(record(ID_A, "files"), archive(tmp_path, b"the archive"))
    assert shared.fetch_file(ID_A, "dataset.zip", str(tmp_path / "back.zip"))
    assert (tmp_path / "back.zip").read_bytes() == b"the archive"
    for data in (b"step 3", b"step 6"):
        (tmp_path / "c.tar").write_bytes(data)
        shared.put_file(ID_A, "checkpoint.tar", str(tmp_path / "c.tar"))
    assert shared.fetch_file(ID_A, "checkpoint.tar", str(tmp_path / "c-back.tar"))
    assert (tmp_path / "c-back.tar").read_bytes() == b"step 6"
    shared.remove_files(ID_A, ("dataset.zip", "checkpoint.tar"))
    assert not shared.fetch_file(ID_A, "checkpoint.tar", str(tmp_path / "none.tar"))
    assert not (tmp_path / "none.tar").exists()


def test_a_queued_fine_tune_cancelled_loses_its_files_at_once(shared, tmp_path):
    shared.add(record(ID_A, "queued"), archive(tmp_path))
    assert shared.cancel(ID_A)["state"] == "cancelled"
    assert not shared.fetch_file(ID_A, "dataset.zip", str(tmp_path / "gone.zip"))
    assert shared.claim("host-1", 30) is None
    assert shared.cancel("not an id") is None and shared.get("../x") is None


def test_the_local_store_keeps_a_folder_per_fine_tune(tmp_path):
    store = open_fine_tune_store(Settings(), str(tmp_path / "fine-tunes"))
    assert not store.shared
    (tmp_path / "fine-tunes" / ID_A).mkdir(parents=True)
    store.add(record(ID_A, "local"), str(tmp_path / "fine-tunes" / ID_A / "dataset.zip"))
    assert (tmp_path / "fine-tunes" / ID_A / "state.json").exists()
    claim = store.claim("here", 30)
    assert claim.record["id"] == ID_A and not claim.resume
    assert store.beat(claim, 30) == GO_ON
    assert store.cancel(ID_A)["state"] == "running"  # asked to stop, from any process
    assert store.beat(claim, 30) == CANCEL


def test_stray_collection_takes_objects_no_fine_tune_names_and_jobs_leave_theirs(
        postgres_url, object_store, seaweed, tmp_path):
    from seaweed import BUCKET
    from whisper_service.queue.finetune_store import OBJECT_FOLDER
    from whisper_service.queue.finetune_store.shared import SharedFineTunes
    from whisper_service.queue.store.objects import ObjectFiles

    url = f"{object_store}/{OBJECT_FOLDER}"
    store = SharedFineTunes(postgres_url, str(tmp_path / "fine-tunes"), ObjectFiles(url, 0.0))
    try:
        store.add(record(ID_A, "kept"), archive(tmp_path))  # a record names it
        prefix = object_store.split(f"s3://{BUCKET}/", 1)[1] + "/"
        seaweed.client().put_object(Bucket=BUCKET, Key=f"{prefix}{OBJECT_FOLDER}/{ID_B}/model.tar",
                                    Body=b"a crash between the object and its record")
        # the jobs' own collection (every object under the prefix no job names) leaves them
        jobs = ObjectFiles(object_store, 0.0)
        assert jobs.collect_strays(lambda ids: []) == 0
        assert store.collect_strays() == 1
        assert seaweed.keys(prefix) == [f"{prefix}{OBJECT_FOLDER}/{ID_A}/dataset.zip"]
    finally:
        store.close()
