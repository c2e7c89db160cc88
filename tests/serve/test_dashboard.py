"""The dashboard in a real browser (Debian's headless Chromium via selenium), clicked through
while a training job runs, then with a version and a comparison (its plot) recorded."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import need
from tests.serve.conftest import TOKEN, Service, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1280,1600")


@pytest.fixture
def browser():
    need(Path(CHROMIUM).is_file() and Path(DRIVER).is_file(), "chromium + chromium-driver (scripts/install_system.sh)")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must never fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(executable_path=DRIVER), options=opts)
    yield driver
    driver.quit()


def text_of(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)  # empty while the page is (re)loading
    return found[0].text if found else ""


def test_click_through_the_dashboard_while_a_job_runs(serve_ws, browser, tmp_path):
    from selenium.webdriver.common.by import By

    svc = Service(serve_ws.root)
    try:
        job = svc.http.post("/finetune/start", json={"max_steps": 12}).json()
        browser.get(svc.url + "/")  # the pages show examples: the service's token first (issue 20)
        assert "log in" in browser.title and not browser.find_elements(By.ID, "jobs")
        browser.find_element(By.NAME, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "form button").click()
        assert wait_for(lambda: browser.find_elements(By.ID, "jobs"), 30, 0.2), browser.page_source[:500]
        assert "ftctl" in browser.title and text_of(browser, "#deployment").startswith("stable -")
        assert "no versions yet" in text_of(browser, "#versions")
        # the jobs table refreshes itself (no reload) until the job shows progress
        assert wait_for(lambda: "/" in text_of(browser, "#jobs-table .step"), 240, 1), text_of(browser, "#jobs")
        browser.save_screenshot(str(tmp_path / "running.png"))
        browser.find_element(By.LINK_TEXT, job["id"]).click()
        assert browser.current_url.endswith(f"/ui/jobs/{job['id']}")
        assert text_of(browser, "#state") == "running"
        assert "step" in text_of(browser, "#log")
        # the job page reloads itself while the job runs: it ends done
        assert wait_for(lambda: text_of(browser, "#state") == "done", 300, 1)
        assert '"version": "v1.0"' in text_of(browser, "#result")

        evaluation = svc.http.post("/evaluate", json={
            "a": "base", "b": "latest", "metrics": ["exact_match", "token_f1"], "limit": 2,
            "set": ["eval.max_new_tokens=4", "eval.bootstrap=200"]}).json()
        done = svc.wait_job(evaluation["id"])
        assert done["state"] == "done", done["log_tail"]
        # the stored result quotes scrubbed text under hashed ids (conversation keys may be e-mails)
        assert done["result"]["scrubbed"] is True
        assert all(c["id"].startswith("h") and len(c["id"]) == 16 for c in done["result"]["changed"])
        assert done["reports"]["html"].startswith("/reports/assistant/")
        assert svc.http.get(done["reports"]["html"]).status_code == 200

        browser.get(svc.url + "/")
        assert "base → v1.0" in text_of(browser, "#comparison").replace("\u2192", "→")
        assert browser.find_elements(By.CSS_SELECTOR, ".plot svg"), "the comparison's plot"
        shot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("FTCTL_DOCS_SCREENSHOT"):  # refresh docs/serve-dashboard.png
            shutil.copy(shot, os.environ["FTCTL_DOCS_SCREENSHOT"])
        browser.find_element(By.LINK_TEXT, "assistant@v1.0").click()
        assert "train_loss" in text_of(browser, "#metrics")
        browser.find_element(By.LINK_TEXT, "report").click()
        assert browser.current_url.startswith(svc.url + "/reports/assistant/")
        assert "v1.0" in browser.page_source and "exact_match" in browser.page_source  # the report itself
    finally:
        svc.stop()
