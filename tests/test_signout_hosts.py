"""Sign-outs hold across web hosts (issue 26): with PostgreSQL the keys' sign-out
generations live in its sign_outs table, so a cookie signed out on one web pod is refused
on every other, each with a data folder of its own."""

from __future__ import annotations

import psycopg

from conftest import make_app
from test_signin import KEYS, csrf, sign_in
from web.http.sessions import key_id
from whisper_service.queue.store.signouts import FolderSignOuts


def test_a_cookie_signed_out_on_one_host_is_refused_on_another(postgres_url, checkpoint, tmp_path):
    hosts = [make_app(checkpoint, tmp_path / name, WHISPER_API_KEYS=KEYS, WHISPER_ROLE="web",
                      WHISPER_DATABASE_URL=postgres_url) for name in ("a", "b")]
    try:
        browser, elsewhere = hosts[0].test_client(), hosts[1].test_client()
        assert sign_in(browser).status_code == 303
        elsewhere.set_cookie("session", browser.get_cookie("session").value)
        assert elsewhere.get("/").status_code == 200  # the same cookie works on host b
        assert browser.post("/signout", data={"csrf_token": csrf(browser)}).status_code == 303
        refused = elsewhere.get("/")
        assert refused.status_code == 303 and refused.headers["Location"].startswith("/signin")
        assert elsewhere.post("/jobs", data={}).status_code in (400, 401)
        # kept in the database, not in either host's data folder
        with psycopg.connect(postgres_url) as db:
            assert db.execute("SELECT generation FROM sign_outs").fetchall() == [(1,)]
        for name in ("a", "b"):
            assert not (tmp_path / name / "jobs" / "sign-outs").exists()
        # signing in again on host b counts on host a
        again = hosts[1].test_client()
        assert sign_in(again).status_code == 303
        browser.set_cookie("session", again.get_cookie("session").value)
        assert browser.get("/").status_code == 200
    finally:
        for host in hosts:
            host.extensions["whisper_jobs"].store.close()


def test_the_sqlite_host_keeps_them_in_its_data_folder(tmp_path):
    from whisper_service.queue.store import open_store

    store = open_store("", str(tmp_path))
    book = store.sign_outs(str(tmp_path / "sign-outs"))
    assert isinstance(book, FolderSignOuts)
    key = key_id("fingerprint")
    assert book.generation(key) == 0 and book.advance(key) == 1 and book.advance(key) == 2
    assert (tmp_path / "sign-outs" / key).read_text() == "2"
    store.close()
