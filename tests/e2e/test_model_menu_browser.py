"""The model menu in a real browser: the language list follows the chosen model (an
English-only model offers English alone, unless the task is translation), on the upload
page and the live page; a model that cannot be had here is greyed out. Screenshots go to
test-output/ (model-menu-*.png)."""

from __future__ import annotations

import pytest
import whisper

from conftest import make_app, serving
from test_browser import DESKTOP, OUTPUT, browser  # noqa: F401  (a fixture: one Chromium)


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory):
    """A fresh clone's first start offline, after its preload: turbo's download failed and
    the bundled base stands in. No job runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(whisper._MODELS, "turbo", "http://127.0.0.1:9/0000/turbo.pt")
        app = make_app("turbo", tmp_path_factory.mktemp("menu"))
        app.extensions["whisper_jobs"].stop()
        assert app.extensions["whisper_service"].models.preload().name == "bundled-base"
        with serving(app) as base:
            yield base


@pytest.fixture(scope="module")
def page(browser):
    """One page for the module, in test_browser's Chromium."""
    return browser.new_context(**DESKTOP).new_page()


def offered(page) -> list:
    """The languages the list lets a person choose."""
    return page.eval_on_selector_all("#language option", "os => os.filter(o => !o.disabled && "
                                     "!o.hidden).map(o => o.value)")


@pytest.mark.parametrize("path", ["/", "/live"])
def test_the_language_list_follows_the_chosen_model(offline_server, page, path):
    page.goto(offline_server + path)
    assert page.input_value("#model") == "bundled-base"  # what runs, not the missing turbo
    assert page.eval_on_selector('#model option[value="turbo"]', "o => o.disabled")
    assert "not on this server" in page.text_content('#model option[value="turbo"]')
    everything = offered(page)
    assert len(everything) > 90 and "fr" in everything and "auto" in everything

    page.select_option("#language", "fr")
    page.select_option("#model", "bundled")  # tiny.en: English only
    assert offered(page) == ["en"]
    assert page.input_value("#language") == "en"
    assert page.is_visible("#language-hint")
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"model-menu-english-only{path.replace('/', '-')}.png"),
                    full_page=True)

    page.check("#task-translate")  # the translation model hears every language
    assert len(offered(page)) == len(everything)
    page.check("#task-transcribe")
    assert offered(page) == ["en"]

    page.select_option("#model", "bundled-base")
    assert len(offered(page)) == len(everything)
    assert page.input_value("#language") == "auto"  # the English chosen for the person goes
    assert not page.is_visible("#language-hint")
