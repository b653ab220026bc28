"""Where fine-tunes live, chosen once from the configuration as the job store is:
`open_fine_tune_store(settings, folder)` gives the local folder (no WHISPER_DATABASE_URL:
the embedded default) or the shared place (a postgresql:// URL: the `fine_tunes` table, and
the files as rows or, with WHISPER_OBJECT_STORE, as objects under `<prefix>fine-tunes/`)."""

from __future__ import annotations

from whisper_service.config import Settings
from whisper_service.queue.finetune_store.base import FineTuneStore
from whisper_service.queue.store import POSTGRES_SCHEMES

OBJECT_FOLDER = "fine-tunes"  # under WHISPER_OBJECT_STORE's prefix; never a job id's shape


def open_fine_tune_store(settings: Settings, folder: str) -> FineTuneStore:
    """`folder` is this host's work folder for fine-tunes (their clips, checkpoints, models)."""
    if not settings.database_url.startswith(POSTGRES_SCHEMES):
        from whisper_service.queue.finetune_store.local import LocalFineTunes

        return LocalFineTunes(folder)
    from whisper_service.queue.finetune_store.shared import SharedFineTunes
    from whisper_service.queue.store.blobs import JobFiles, TableFiles

    files: JobFiles
    if settings.object_store:
        from whisper_service.queue.store.objects import ObjectFiles

        files = ObjectFiles(f"{settings.object_store.rstrip('/')}/{OBJECT_FOLDER}")
    else:
        files = TableFiles("fine_tune_files", "fine_tunes")
    return SharedFineTunes(settings.database_url, folder, files)
