"""egc serve end to end in a real headless Chromium (Debian's chromium + chromedriver, via selenium).

Skipped when the browser or its driver is missing: ``bash scripts/browser.sh`` installs them (CI
runs it first). With EGC_SCREENSHOTS=1 the test saves docs/serve/{classify,generate,cag}.png.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "serve"

if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} missing: run `bash scripts/browser.sh` (apt-get install chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install -e '.[test]'")
pytest.importorskip("uvicorn")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from .test_serve import Server  # noqa: E402


@pytest.fixture(scope="module")
def server():
    s = Server(["zoo:fashion-mnist"])
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1800"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def _wait(drv, cond, timeout: float = 20, what: str = ""):
    # The page re-renders lists as answers stream in: an element found a moment ago may be gone by the
    # time it is read. That is a reason to look again, not a failure.
    return WebDriverWait(drv, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: cond(d), message=what)


def _shot(el, name: str) -> None:
    if os.environ.get("EGC_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        el.parent.execute_script("arguments[0].scrollIntoView(true);", el)
        el.screenshot(str(DOCS / name))


def _visible_text(drv, css: str) -> str:
    el = drv.find_element(By.CSS_SELECTOR, css)
    return el.text if el.is_displayed() else ""


def test_page_end_to_end(server, browser, tmp_path):
    drv = browser
    t_start = time.time()
    drv.get(server.url + "/")
    _wait(drv, lambda d: len(Select(d.find_element(By.ID, "gen-class")).options) == 11, what="page did not load the model info")

    # ---- 1. draw on the canvas: a prediction appears
    canvas = drv.find_element(By.ID, "draw")
    (ActionChains(drv).move_to_element_with_offset(canvas, -60, -100).click_and_hold()
     .move_by_offset(0, 60).move_by_offset(0, 60).move_by_offset(0, 60).move_by_offset(120, 0)
     .move_by_offset(0, -60).move_by_offset(0, -60).move_by_offset(0, -60).release().perform())
    _wait(drv, lambda d: _visible_text(d, "#top li"), what="no prediction for the drawing")
    assert drv.find_element(By.ID, "classified-name").text == "drawing.png"
    assert drv.find_element(By.ID, "energy").text not in ("", "n/a")

    # ---- upload a real test image: its class is the top prediction
    with np.load(Path(__file__).resolve().parents[1] / "src/egc/zoo/fashion-mnist-examples.npz") as z:
        img, label, names = z["images"][0], int(z["labels"][0]), [str(s) for s in z["class_names"]]
    png = tmp_path / "test-image.png"
    Image.fromarray(img[..., 0]).save(png)
    drv.find_element(By.ID, "upload").send_keys(str(png))
    _wait(drv, lambda d: d.find_element(By.ID, "classified-name").text == "test-image.png", what="upload not classified")
    assert drv.find_element(By.CSS_SELECTOR, "#top li:first-child .name").text == names[label]
    reading = drv.find_element(By.ID, "reading").text
    assert "percentile" in reading and ("typical" in reading or "unusual" in reading)
    assert "20 real Fashion-MNIST test images" in drv.find_element(By.ID, "reference").text
    _shot(drv.find_element(By.ID, "classify"), "classify.png")

    # ---- bad uploads: a one-line error on the page, and the server keeps answering
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    drv.find_element(By.ID, "upload").send_keys(str(bad))
    _wait(drv, lambda d: "not a readable image" in _visible_text(d, "#classify-error"), what="no error for a non-image")
    huge = tmp_path / "huge.png"
    Image.new("L", (5000, 5000)).save(huge)
    drv.find_element(By.ID, "upload").send_keys(str(huge))
    _wait(drv, lambda d: "limit is 4096 pixels" in _visible_text(d, "#classify-error"), what="no error for a huge image")
    drv.find_element(By.ID, "upload").send_keys(str(png))  # the server still answers
    _wait(drv, lambda d: _visible_text(d, "#top li") and not d.find_element(By.ID, "classify-error").is_displayed(), what="server stopped answering")

    # ---- 2. generate: intermediate frames, then the final images
    Select(drv.find_element(By.ID, "gen-class")).select_by_value("1")
    for fid, v in (("gen-steps", "12"), ("gen-n", "10")):
        el = drv.find_element(By.ID, fid)
        el.clear()
        el.send_keys(v)
    drv.find_element(By.ID, "gen-start").click()
    _wait(drv, lambda d: d.find_element(By.ID, "gen-final").is_displayed() or d.find_element(By.ID, "gen-error").is_displayed(), timeout=30,
          what="generation did not finish")
    assert not drv.find_element(By.ID, "gen-error").is_displayed(), drv.find_element(By.ID, "gen-error").text
    assert int(drv.find_element(By.ID, "gen-frame").get_attribute("data-frames")) >= 3  # >= 2 intermediate + the last
    assert len(drv.find_elements(By.CSS_SELECTOR, "#gen-final .images img")) == 10
    assert drv.find_element(By.ID, "gen-download").get_attribute("href").startswith("data:image/png;base64,")
    assert "done" in drv.find_element(By.ID, "gen-status").text
    _shot(drv.find_element(By.ID, "generate"), "generate.png")

    # ---- cancel a long one after its first frame
    for fid, v in (("gen-steps", "250"), ("gen-n", "64")):
        el = drv.find_element(By.ID, fid)
        el.clear()
        el.send_keys(v)
    drv.find_element(By.ID, "gen-start").click()
    _wait(drv, lambda d: d.find_element(By.ID, "gen-status").text.startswith("step "), what="long generation did not start")
    drv.find_element(By.ID, "gen-cancel").click()
    _wait(drv, lambda d: d.find_element(By.ID, "gen-status").text == "cancelled", what="not cancelled")
    _wait(drv, lambda d: d.execute_script("return fetch('/api/health').then(r => r.json())")["running"] is None, what="job kept running")

    # ---- 3. classifier as generator: the image forms live
    Select(drv.find_element(By.ID, "cag-class")).select_by_value("1")
    el = drv.find_element(By.ID, "cag-steps")
    assert el.get_attribute("value") == "300"  # an EGC head's measured default (egc.cag.generate.recommended_config)
    el.clear()
    el.send_keys("40")
    drv.find_element(By.ID, "cag-start").click()
    _wait(drv, lambda d: d.find_element(By.ID, "cag-final").is_displayed() or d.find_element(By.ID, "cag-error").is_displayed(), timeout=40,
          what="CaG did not finish")
    assert not drv.find_element(By.ID, "cag-error").is_displayed(), drv.find_element(By.ID, "cag-error").text
    assert int(drv.find_element(By.ID, "cag-frame").get_attribute("data-frames")) >= 3
    assert len(drv.find_elements(By.CSS_SELECTOR, "#cag-final .images img")) == 4
    _shot(drv.find_element(By.ID, "cag"), "cag.png")
    logs = [e for e in drv.get_log("browser") if e["level"] == "SEVERE" and "/api/" not in e["message"]]
    assert not logs, logs  # no script errors (refused API calls log as SEVERE network errors: expected)
    assert time.time() - t_start < 60
