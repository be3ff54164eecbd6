"""The analysts' page end to end: ``dfpipe serve`` in a subprocess, headless Chromium uploads
videos and a photo through the form; verdicts, progress and the threshold slider are checked.
Needs Debian's chromium + chromium-driver (``make test`` installs them via
scripts/install_browser.sh); skipped with the reason when they are missing."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def _serve(checkpoint: Path, log: Path):
    """``dfpipe serve`` of ``checkpoint`` in a subprocess; yields its URL once healthy."""
    port = _free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "serve", "--checkpoint", str(checkpoint),
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
def server(tiny_checkpoint, tmp_path_factory):
    """The page served with a cnn_lstm checkpoint."""
    with _serve(tiny_checkpoint, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def frame_server(tiny_frame_checkpoint, tmp_path_factory):
    """The page served with a frame checkpoint (it scores videos and still images)."""
    with _serve(tiny_frame_checkpoint, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


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


def _upload_and_wait(browser, url: str, path: Path, timeout: float = 240.0, reload: bool = True):
    """Upload ``path`` through the page's form; returns the new result card once it has a
    verdict (or a refusal)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if reload:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(
            lambda d: "checkpoint" in d.find_element(By.ID, "model").text)
    before = len(browser.find_elements(By.CSS_SELECTOR, "#results .result"))
    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, timeout).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) > before
        and d.find_element(By.CSS_SELECTOR, "#results .result .verdict").text.strip())
    return browser.find_element(By.CSS_SELECTOR, "#results .result")


def _verdict(card) -> str:
    from selenium.webdriver.common.by import By

    return card.find_element(By.CSS_SELECTOR, ".verdict").text


def _shot(browser, tmp_path: Path, name: str) -> Path:
    shot = (SCREENSHOTS or tmp_path) / name
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    return shot


def test_upload_real_clip_shows_verdict(server, browser, real_samples, tmp_path):
    from selenium.webdriver.common.by import By

    video = real_samples / "dfdc" / "train_sample_videos" / "abqwwspghj.mp4"
    card = _upload_and_wait(browser, server, video)
    verdict = _verdict(card)
    assert verdict.startswith(("FAKE", "REAL")), verdict
    assert "p_fake" in verdict
    assert "abqwwspghj.mp4" in card.text and "verdict rests on" in card.text
    assert "cnn_lstm" in browser.find_element(By.ID, "model").text
    # the evidence sheet arrived as an image and rendered
    width = browser.execute_script(
        "return document.querySelector('#results .result .evidence').naturalWidth")
    assert width > 300
    _shot(browser, tmp_path, "browser_verdict.png")


def test_upload_text_file_is_rejected_on_the_page(server, browser, tmp_path):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video\n" * 200)
    card = _upload_and_wait(browser, server, bogus, timeout=60)
    assert _verdict(card).startswith("Rejected (415)")
    assert "notes.mp4" in card.text and "dfpipe-upload" not in card.text
    assert "decision threshold" not in card.text  # no slider without a probability


@pytest.fixture(scope="module")
def face_media(tmp_path_factory) -> dict[str, Path]:
    """A synthetic face clip (150 frames) and one of its frames as a JPEG photo."""
    from PIL import Image

    from pipeline.synth.dataset import make_clip, render_frames

    d = tmp_path_factory.mktemp("face_media")
    spec = make_clip(d / "speaker.mp4", n_frames=150, seed=1)
    frame = next(f for i, f in enumerate(render_frames(spec)) if i == 40)
    Image.fromarray(frame).save(d / "portrait.jpg", quality=95)
    return {"video": d / "speaker.mp4", "image": d / "portrait.jpg"}


def test_page_scores_video_and_image_moves_threshold_shows_progress(frame_server, browser,
                                                                    face_media, tmp_path):
    """Issue #15: through the form, a video and an image each get a verdict (a frame model
    scores both); the slider flips the verdict while p_fake stays; progress is shown (upload,
    then the frames the detector has looked at)."""
    from selenium.webdriver.common.by import By

    video_card = _upload_and_wait(browser, frame_server, face_media["video"])
    verdict = _verdict(video_card)
    assert verdict.startswith(("FAKE", "REAL")), video_card.text
    steps = [li.text for li in video_card.find_elements(By.CSS_SELECTOR, ".progress-log li")]
    assert "uploading 100%" in steps, steps
    faces = [s for s in steps if s.startswith("finding faces ")]
    assert faces and faces[-1].split()[-1] == faces[-1].split()[-3], steps  # n / n at the end
    assert steps[-1] == "done", steps
    assert browser.find_elements(By.CSS_SELECTOR, "#results .result svg polyline")
    assert "trained on SYNTHETIC data" in video_card.text
    assert browser.find_element(By.ID, "warn").is_displayed()

    _flip_and_reset(browser, video_card)

    image_card = _upload_and_wait(browser, frame_server, face_media["image"], reload=False)
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .result")
    assert len(cards) == 2  # both verdicts stay on the page
    shot = _shot(browser, Path("/tmp") if SCREENSHOTS is None else tmp_path, "w15b_browser_page.png")
    image_verdict = _verdict(image_card)
    assert image_verdict.startswith(("FAKE", "REAL")), (image_card.text, shot)
    assert "portrait.jpg" in image_card.text and "verdict rests on" in image_card.text
    assert image_card.find_elements(By.CSS_SELECTOR, ".evidence")
    _flip_and_reset(browser, image_card)
    assert _verdict(video_card).startswith(video_card.get_attribute("data-label"))  # its own


def _flip_and_reset(browser, card) -> None:
    """Move the card's threshold slider past its p_fake: the verdict flips, p_fake stays; the
    reset button brings back the model's verdict."""
    from selenium.webdriver.common.by import By

    before = _verdict(card)
    p = float(card.get_attribute("data-p"))
    label = card.get_attribute("data-label")
    set_t = "const s = arguments[0].querySelector('.threshold'); s.value = arguments[1]; " \
            "s.dispatchEvent(new Event('input'));"
    flipped_t = min(1.0, p + 0.05) if label == "FAKE" else max(0.0, p - 0.05)
    browser.execute_script(set_t, card, flipped_t)
    after = _verdict(card)
    assert after.startswith("REAL" if label == "FAKE" else "FAKE"), after
    assert f"p_fake = {p:.3f}" in after and f"p_fake = {p:.3f}" in before  # p unchanged
    assert f"at threshold {flipped_t:.3f}" in after
    assert "you moved the threshold" in card.text
    card.find_element(By.CSS_SELECTOR, ".reset").click()
    assert _verdict(card) == before
    assert "you moved the threshold" not in card.text


def test_cnn_lstm_page_says_an_image_needs_video(server, browser, face_media):
    """A cnn_lstm checkpoint answers a photo with a status and reason, on the page too."""
    card = _upload_and_wait(browser, server, face_media["image"])
    assert _verdict(card).startswith("No verdict"), card.text
    assert "portrait.jpg" in card.text and "video" in card.text and "dfpipe-upload" not in card.text


def test_batch_index_sorts_by_clicked_header(browser, tmp_path):
    """The batch index page (``--explain OUT/index.html``) sorts by a header click, offline."""
    from selenium.webdriver.common.by import By

    from pipeline.score.batch_index import write_index

    rows = [{"path": f"in/{n}.mp4", "status": s, "label": lab, "p_fake": p, "frames_used": f,
             "reason": "" if s == "ok" else f"in/{n}.mp4: no face found"}
            for n, s, lab, p, f in [("b", "ok", "FAKE", 0.9, 30), ("a", "no_face", None, None, 0),
                                    ("c", "ok", "REAL", 0.2, 12)]]
    page = write_index(rows, tmp_path)
    browser.get(page.as_uri())

    def first_column():
        return [tr.find_element(By.TAG_NAME, "td").text
                for tr in browser.find_elements(By.CSS_SELECTOR, "#batch tbody tr")]

    assert first_column() == ["in/b.mp4", "in/a.mp4", "in/c.mp4"]
    header = browser.find_element(By.CSS_SELECTOR, 'th[data-col="2"]')  # p_fake
    header.click()
    assert first_column() == ["in/a.mp4", "in/c.mp4", "in/b.mp4"]  # no score first, ascending
    header.click()
    assert first_column() == ["in/b.mp4", "in/c.mp4", "in/a.mp4"]
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="0"]').click()
    assert first_column() == ["in/a.mp4", "in/b.mp4", "in/c.mp4"]
