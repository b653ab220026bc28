"""A real PostgreSQL cluster for the tests: initdb into a temporary folder, the server on a
Unix socket in that folder (no port to collide with), stopped at the end of the session.

Debian's `postgresql` package (make test installs it) puts initdb and pg_ctl under
/usr/lib/postgresql/<version>/bin. As root, initdb refuses to run, so the cluster then
belongs to the `postgres` user the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from typing import List, Optional
from urllib.parse import quote

BIN_GLOB = "/usr/lib/postgresql/*/bin"
SUPERUSER = "postgres"
DATABASE = "whisper"
START_TIMEOUT_SECONDS = 60
# a throwaway cluster: durability off for speed, room for many test processes' connections
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off " \
                 "-c max_connections=300 -c listen_addresses=''"


class MissingPostgres(RuntimeError):
    pass


def find_bin() -> str:
    """The newest folder holding both initdb and pg_ctl."""
    found = sorted((d for d in glob.glob(BIN_GLOB)
                    if os.path.exists(os.path.join(d, "initdb"))
                    and os.path.exists(os.path.join(d, "pg_ctl"))),
                   key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0)
    if not found:
        raise MissingPostgres(
            f"PostgreSQL's initdb and pg_ctl were not found under {BIN_GLOB}: install "
            "Debian's postgresql package (`make test` does)")
    return found[-1]


class Cluster:
    def __init__(self) -> None:
        self.bin = find_bin()
        self.folder = tempfile.mkdtemp(prefix="whisper-pg-")
        self.data = os.path.join(self.folder, "data")
        self.log = os.path.join(self.folder, "server.log")
        self._user: Optional[str] = None
        if os.geteuid() == 0:  # initdb refuses root: the package's own user runs the server
            self._user = SUPERUSER
            entry = pwd.getpwnam(SUPERUSER)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", self.data, "-U", SUPERUSER, "-A", "trust", "--no-sync",
                  "-E", "UTF8", "--locale=C")
        self.start()
        self.admin(f"CREATE DATABASE {DATABASE}")

    def url(self, database: str = DATABASE, schema: Optional[str] = None) -> str:
        options = f"&options={quote(f'-csearch_path={schema}')}" if schema else ""
        return f"postgresql://{SUPERUSER}@/{database}?host={quote(self.folder)}{options}"

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t",
                  str(START_TIMEOUT_SECONDS), "-o", f"-k {self.folder} {SERVER_OPTIONS}", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Every connection is cut; the data stays."""
        self.stop()
        self.start()

    def admin(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(sql)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        command: List[str] = [os.path.join(self.bin, tool), *args]
        if self._user:
            command = ["runuser", "-u", self._user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = ""
            if os.path.exists(self.log):
                with open(self.log, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-2000:]
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")
