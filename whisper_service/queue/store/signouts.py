"""Each API key's sign-out generation, where every web host that checks a cookie reads it.

Signing out in a browser advances the key's generation; a session cookie carries the
generation of its sign-in, and counts only while it is still the key's (web/http/
sessions.py). A web host must therefore read the generation every other host wrote:

- FolderSignOuts: one small file per key in a folder of the data folder: every worker
  process of one host shares it (the SQLite store's deployment: one host).
- the PostgreSQL store's sign_outs table (PostgresStore.sign_outs()): every host of a
  shared database, however many web pods.

JobStore.sign_outs(folder) picks the one for its deployment. A counter, not a time, so
hosts' clocks need not agree on it. Key ids are short digests (sessions.key_id), never a
key.
"""

from __future__ import annotations

import abc
import os
import tempfile


class SignOutBook(abc.ABC):
    """Each key's sign-out generation: 0 until its first sign-out."""

    @abc.abstractmethod
    def generation(self, key_id: str) -> int:
        """The key's generation now."""

    @abc.abstractmethod
    def advance(self, key_id: str) -> int:
        """Make the key's generation the next one (atomically); that generation."""


class FolderSignOuts(SignOutBook):
    """A number in a file named after the key's id, in one folder of one host."""

    def __init__(self, folder: str):
        self.folder = folder

    def generation(self, key_id: str) -> int:
        try:
            with open(self._path(key_id), encoding="ascii") as f:
                return int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def advance(self, key_id: str) -> int:
        """The next generation, written whole (a reader never sees half a number)."""
        os.makedirs(self.folder, exist_ok=True)
        following = self.generation(key_id) + 1
        fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(str(following))
        os.replace(temporary, self._path(key_id))
        return following

    def _path(self, key_id: str) -> str:
        return os.path.join(self.folder, key_id)
