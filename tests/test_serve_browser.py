"""The page of `ferkit serve` in a real browser: Debian's headless chromium driven by Selenium.

A server runs on a free localhost port in a thread. The photo test uploads a photo through the
page's file input and checks the face card (label, probability bars) and the box drawn on the
canvas; the webcam test feeds chromium's fake camera from a small .y4m clip the test writes and
checks that live faces with labels appear over the WebSocket; the video test uploads a small clip as
a job and saves its three files with the download buttons. scripts/test.sh installs chromium
and chromium-driver with apt when missing; without them this module is skipped, saying so.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import running_server

from ferkit.bundled import DEFAULT_MODEL

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'ferkit[serve]'")
pytest.importorskip("selenium", reason="needs selenium (the test extra)")

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("the browser test needs Debian's chromium and chromium-driver (apt-get install -y chromium "
                "chromium-driver; scripts/test.sh does it as root)", allow_module_level=True)


def _scene() -> np.ndarray:
    """A 640x480 BGR photo with one face (matplotlib's Grace Hopper, shrunk) on a plain background."""
    import cv2

    from ferkit.bundled import sample_photo

    face = cv2.resize(cv2.imread(str(sample_photo())), (300, 352), interpolation=cv2.INTER_AREA)
    img = np.full((480, 640, 3), (200, 190, 180), np.uint8)
    img[64:416, 170:470] = face
    return img


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """An uncompressed YUV4MPEG2 clip (4:2:0), the format chromium's fake camera reads."""
    import cv2

    h, w = frames[0].shape[:2]
    with open(path, "wb") as fh:
        fh.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for f in frames:
            fh.write(b"FRAME\n")
            fh.write(cv2.cvtColor(f, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    import cv2

    folder = tmp_path_factory.mktemp("browser")
    scene = _scene()
    photo = folder / "photo.jpg"
    cv2.imwrite(str(photo), scene)
    frames = [np.roll(scene, dx, axis=1) for dx in (0, 4, 8, 4)]      # a face that moves a little
    clip = folder / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (640, 480))
    for f in frames * 2:
        writer.write(f)
    writer.release()
    downloads = folder / "downloads"
    downloads.mkdir()
    return {"photo": photo, "y4m": write_y4m(folder / "camera.y4m", frames), "clip": clip, "downloads": downloads}


@pytest.fixture(scope="module")
def server():
    from ferkit import Recognizer
    from ferkit.serve import create_app, url_of

    with running_server(create_app(Recognizer.load())) as sock:
        yield url_of(sock)


@pytest.fixture(scope="module")
def browser(media):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")        # never let Selenium Manager look for a download
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={media['y4m']}", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(media["downloads"]),
                                           "download.prompt_for_download": False})
    try:
        driver = webdriver.Chrome(options=opts, service=Service(executable_path=DRIVER))
    except Exception as exc:  # noqa: BLE001 - selenium wraps every start failure in its own types
        pytest.skip(f"chromium did not start: {str(exc).splitlines()[0][:200]}")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _until(driver, fn, seconds: float = 60.0, what: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.1).until(lambda d: fn(d), what)


def test_page_photo_upload_draws_boxes_and_labels(browser, server, media):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    _until(browser, lambda d: DEFAULT_MODEL in d.find_element(By.ID, "model").text, what="model line")
    classes = browser.execute_script("return classes;")
    assert len(classes) >= 2
    browser.find_element(By.ID, "file").send_keys(str(media["photo"]))
    cards = _until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#photo-faces .face"), what="face cards")
    assert len(cards) == 1
    label = cards[0].find_element(By.CSS_SELECTOR, ".label").text.split()[0]
    assert label in classes
    bars = cards[0].find_elements(By.CSS_SELECTOR, ".bar")
    assert [b.get_attribute("data-cls") for b in bars] == classes
    widths = [float(b.find_element(By.CSS_SELECTOR, ".fill").value_of_css_property("width").rstrip("px"))
              for b in bars]
    assert max(widths) > 0 and widths.index(max(widths)) == classes.index(label)
    # the box is drawn on the canvas, over the face, in the label's colour
    canvas = browser.find_element(By.ID, "photo-canvas")
    assert canvas.get_attribute("data-faces") == "1"
    x, y, w, h = browser.execute_script("return JSON.parse(arguments[0].dataset.boxes)[0];", canvas)
    assert 170 <= x + w / 2 <= 470 and 64 <= y + h / 2 <= 416
    pixel = browser.execute_script(
        "const c = arguments[0]; return Array.from(c.getContext('2d').getImageData(arguments[1], arguments[2], 1, 1)"
        ".data);", canvas, int(x + w / 2), int(y + h - 1))
    want = browser.execute_script("return color(arguments[0]);", label)
    assert "#%02x%02x%02x" % tuple(pixel[:3]) == want
    assert "no face" not in browser.find_element(By.ID, "photo-status").text


def test_page_webcam_mode_shows_live_labels(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    _until(browser, lambda d: DEFAULT_MODEL in d.find_element(By.ID, "model").text, what="model line")
    browser.find_element(By.ID, "tab-cam").click()
    browser.find_element(By.ID, "cam-start").click()
    _until(browser, lambda d: int(d.find_element(By.ID, "cam-status").get_attribute("data-frames") or 0) >= 3,
           seconds=90, what="three frames answered over the WebSocket")
    # the cards are redrawn with every frame: read them in one script call
    titles = _until(browser, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#live-faces .face .title')).map((e) => e.innerText);"),
        what="live faces")
    classes = browser.execute_script("return classes;")
    words = titles[0].split()
    assert words[0] == "face" and words[1].startswith("#") and words[2] in classes, titles
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None   # no error shown
    drawn = browser.execute_script("return cam.history.filter((h) => h.probs).length;")
    assert drawn >= 1                                                 # the timeline has points
    browser.find_element(By.ID, "cam-stop").click()
    assert browser.execute_script("return cam.running;") is False


def test_page_video_job_downloads_its_files(browser, server, media):
    import json

    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    _until(browser, lambda d: DEFAULT_MODEL in d.find_element(By.ID, "model").text, what="model line")
    browser.find_element(By.ID, "tab-video").click()
    assert browser.find_element(By.ID, "video-downloads").get_attribute("hidden") is not None   # nothing yet
    browser.find_element(By.ID, "video-file").send_keys(str(media["clip"]))
    _until(browser, lambda d: d.find_element(By.ID, "video-status").get_attribute("data-state") == "done",
           seconds=120, what="the video job done")
    assert "8 frames" in browser.find_element(By.ID, "video-status").text
    _until(browser, lambda d: d.execute_script("const i = document.getElementById('video-timeline');"
                                               "return !i.hidden && i.naturalWidth > 0;"), what="timeline shown")
    for button in browser.find_elements(By.CSS_SELECTOR, "#video-downloads button"):
        button.click()
    got = _until(browser, lambda d: d.execute_script("return jobs.downloads.length === 3 ? jobs.downloads : null;"),
                 what="three downloads")
    assert [g["name"] for g in got] == ["predictions.csv", "summary.json", "timeline.png"]
    assert all(g["size"] > 0 for g in got)
    folder = media["downloads"]
    _until(browser, lambda d: {p.name for p in folder.iterdir()} >= {"predictions.csv", "summary.json", "timeline.png"},
           what="the files saved by the browser")
    rows = (folder / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("source,frame") and len(rows) == 1 + 8
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["frames"] == 8 and summary["tracks"]
    assert (folder / "timeline.png").read_bytes()[:4] == b"\x89PNG"
