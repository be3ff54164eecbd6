"""The analysts' page end to end: ``dfpipe serve`` in a subprocess, headless Chromium uploads a
clip, the verdict is rendered. Needs Debian's chromium + chromium-driver (``make test`` installs
them via scripts/install_browser.sh); skipped with the reason when they are missing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = Path(os.environ.get("DFPIPE_SCREENSHOTS", "")) if os.environ.get("DFPIPE_SCREENSHOTS") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "serve", "--checkpoint", str(tiny_checkpoint),
             "--port", str(port), "--device", "cpu"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"server did not start: {log.read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian chromium/chromium-driver not installed (run scripts/install_browser.sh)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--window-size=1280,2200",
                 f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def _upload_and_wait(browser, url: str, video: Path, timeout: float = 240.0) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    WebDriverWait(browser, 30).until(
        lambda d: "checkpoint" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "file").send_keys(str(video))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, timeout).until(ec.visibility_of_element_located((By.ID, "verdict")))
    WebDriverWait(browser, timeout).until(lambda d: d.find_element(By.ID, "verdict").text.strip())
    return browser.find_element(By.ID, "verdict").text


def test_upload_real_clip_shows_verdict(server, browser, real_samples, tmp_path):
    from selenium.webdriver.common.by import By

    video = real_samples / "dfdc" / "train_sample_videos" / "abqwwspghj.mp4"
    verdict = _upload_and_wait(browser, server, video)
    assert verdict.startswith(("FAKE", "REAL")), verdict
    assert "p_fake" in verdict
    summary = browser.find_element(By.ID, "summary").text
    assert "abqwwspghj.mp4" in summary and "frames used" in summary
    assert "cnn_lstm" in browser.find_element(By.ID, "model").text
    # the evidence sheet arrived as an image and rendered
    width = browser.execute_script("return document.getElementById('evidence').naturalWidth")
    assert width > 300
    shot = (SCREENSHOTS or tmp_path) / "browser_verdict.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_upload_text_file_is_rejected_on_the_page(server, browser, tmp_path):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video\n" * 200)
    verdict = _upload_and_wait(browser, server, bogus, timeout=60)
    assert verdict.startswith("Rejected (415)")
