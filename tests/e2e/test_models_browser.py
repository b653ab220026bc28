"""The Models page in a real browser (headless Chromium, Playwright): a running fine-tune
with its curve, a finished one with its table, "Try it" landing on the upload page with the
model chosen, and a fine-tune refused on the page with its sentence; screenshots in test-output/."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import make_app, serving
from finetune_states import write_states
from whisper_service.checkpoints import BUNDLED

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def site(tmp_path):
    write_states(tmp_path / "jobs")
    # HTTP only: no fine-tune runs, so the running one stays as written
    with serving(make_app(BUNDLED, tmp_path, WHISPER_ROLE="web")) as base:
        yield base


@pytest.fixture
def page():
    import shutil

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=CHROMIUM_FLAGS)
        yield browser.new_page(viewport={"width": 1280, "height": 900})
        browser.close()


def test_the_models_page_in_a_browser(site, page, tmp_path):
    from test_browser import shoot

    page.goto(site + "/models")
    expect(page.get_by_role("heading", name="Models", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Models")).to_have_attribute("aria-current", "page")
    running = page.locator("#fine-tune-" + "R" * 22)
    expect(running).to_contain_text("step 7 of 20")
    expect(running.locator("svg.curve polyline")).to_have_count(2)
    finished = page.locator("#fine-tune-" + "D" * 22)
    expect(finished.locator("tbody tr")).to_have_count(2)
    expect(finished.locator("tbody tr").nth(1)).to_contain_text("3.0 %")
    shoot(page, "models")

    not_a_zip = tmp_path / "clips.zip"
    not_a_zip.write_text("these are notes")
    page.set_input_files("#dataset", str(not_a_zip))
    page.fill("#name", "mine")
    page.get_by_role("button", name="Start fine-tuning").click()
    # this server serves HTTP only (so the running fine-tune stays as written): it says so
    expect(page.locator("#fine-tune-error")).to_contain_text("this host serves HTTP only")
    expect(page.locator("#name")).to_have_value("mine")

    page.goto(site + "/models")
    finished.get_by_role("link", name="Try it").click()
    expect(page).to_have_url(re.compile(r"/\?model=names-en$"))
    expect(page.locator("#model")).to_have_value("names-en")
