"""The review page in a real browser: Chromium from the OS package, driven by Playwright (no browser download)."""

from __future__ import annotations

import os
import re

import pytest
from conftest import chromium_executable
from serve_support import flat, free_port, noisy, one_torch_thread, post, start, tiny_run

__all__ = ["one_torch_thread", "tiny_run"]


@pytest.mark.slow
def test_upload_review_slider_and_reload_in_chromium(tiny_run, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium_executable()
    (tmp_path / "part.png").write_bytes(noisy(1))
    store, port = tmp_path / "store", free_port()
    server = start(tiny_run, store, port, env={**os.environ, "DRAEM_TOKEN": "page-token"})
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"http://127.0.0.1:{port}/")
            expect = sync_api.expect
            expect(page.locator("#token-form")).to_be_visible()
            page.fill("#token-input", "page-token")
            page.click("#token-form button")
            expect(page.locator("#counts")).to_contain_text("last hour: 0 inspected")

            page.fill("#operator", "Ann")
            page.dispatch_event("#operator", "change")
            page.set_input_files("#upload-files", str(tmp_path / "part.png"))
            page.fill("#upload-source", "<b>bench 3</b>")
            page.click("#upload-form button")
            expect(page.locator("#detail")).to_be_visible()
            page.wait_for_function("document.getElementById('detail-overlay').naturalWidth > 0")
            expect(page.locator("#list li")).to_have_count(1)
            expect(page.locator("#list li").first).to_contain_text("defective")
            expect(page.locator("#list li").first).to_contain_text("<b>bench 3</b>")
            expect(page.locator("#list li img")).to_have_attribute("src", re.compile("^blob:"))
            assert post(port, [flat()], {"Authorization": "Bearer page-token"})[0] == 200
            expect(page.locator("#list li")).to_have_count(2)
            expect(page.locator("#list li").first).to_contain_text("good")
            expect(page.locator("#counts")).to_contain_text("last hour: 2 inspected, 1 defective")

            page.fill("#review-note", "dust on the lens")
            page.click("button[data-verdict=good]")
            expect(page.locator("#review-status")).to_contain_text("reviewed good by Ann: dust on the lens")
            effect = page.locator("#threshold-effect")
            expect(effect).to_contain_text("1 of 1 reviewed good parts rejected")
            page.locator("#threshold-slider").press("End")
            expect(effect).to_contain_text("0 of 1 reviewed good parts rejected")
            page.click("#threshold-save")
            expect(page.locator("#threshold-status")).to_contain_text("saved")
            expect(page.locator("#threshold-history li")).to_contain_text("by Ann")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

            page.reload()
            expect(page.locator("#list li")).to_have_count(2)
            expect(page.locator("#list li").nth(1)).to_contain_text("reviewed: good")
            page.locator("#list li").nth(1).click()
            expect(page.locator("#review-status")).to_contain_text("reviewed good by Ann: dust on the lens")
            assert errors == []
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
