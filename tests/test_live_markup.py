"""The live page's markup through Flask's test client: it renders behind the same guard as the
other pages, loads its script (which loads the AudioWorklet) from this site, and carries no
inline script, style or event attribute, so the strict Content-Security-Policy holds."""

from __future__ import annotations

import re

from test_pages import EVENT_ATTRIBUTE, INLINE_SCRIPT, STATIC, STYLE_ATTRIBUTE


def test_the_live_page_renders_with_its_scripts_and_no_inline_script(client):
    response = client.get("/live")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert '<script src="/static/live.js"></script>' in page
    assert 'data-worklet-url="/static/live-worklet.js"' in page
    assert 'data-socket-path="/api/live"' in page
    assert not INLINE_SCRIPT.search(page)
    assert not STYLE_ATTRIBUTE.search(page) and not EVENT_ATTRIBUTE.search(page)
    # the upload page's choices: the model, every language and auto, the task
    assert re.search(r'<select id="model" name="model"', page)
    assert '<option value="auto">Detect automatically</option>' in page
    assert '<option value="fr">French</option>' in page
    assert 'name="task" value="translate"' in page
    # the nav marks it as the page shown
    assert re.search(r'<a href="/live" aria-current="page">Live</a>', page)
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy
    worklet = client.get("/static/live-worklet.js")
    assert worklet.status_code == 200 and 'registerProcessor("pcm16-frames"' in worklet.get_data(as_text=True)
    assert (STATIC / "live.js").exists()


def test_the_live_page_needs_a_signed_in_browser_when_keys_are_set(checkpoint, tmp_path):
    from conftest import make_app

    app = make_app(checkpoint, tmp_path, WHISPER_API_KEYS="secret-key")
    try:
        response = app.test_client().get("/live")
        assert response.status_code == 303 and "/signin" in response.headers["Location"]
    finally:
        app.extensions["whisper_jobs"].stop()
