"""``difflab serve`` in a real browser: headless Chromium (Debian's package) driven through Selenium.

The server runs as ``python -m difflab serve`` in a subprocess on the tiny runs of ``serve_runs``. Without
Chromium, its driver, selenium or gradio these tests are skipped, saying how to install them. They take about
20 s together on a 2-core CPU (most of it starting the server and the browser).
"""

import base64
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difflab.cli import main

CHROMIUM = os.environ.get("DIFFLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("DIFFLAB_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
INSTALL = ("browser tests need Chromium and its driver (Debian: apt-get install -y chromium chromium-driver) and the "
           "ui and dev extras (bash scripts/setup-env.sh, or pip install -e '.[dev,ui]')")
STARTUP_S, SAMPLE_S = 90, 60


def _missing() -> str | None:
    if not (os.path.isfile(CHROMIUM) and os.path.isfile(CHROMEDRIVER)):
        return f"no {CHROMIUM} or {CHROMEDRIVER}"
    for module in ("selenium", "gradio"):
        try:
            __import__(module)
        except ImportError:
            return f"python package {module} is not installed"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=f"{_missing()}: {INSTALL}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(serve_runs, tmp_path_factory):
    """``difflab serve`` on the tiny runs, started (not yet waited for); yields (process, url, output folder, log).
    Stopped with SIGTERM at the end; its output must hold no traceback."""
    out = tmp_path_factory.mktemp("served")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(out / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "difflab", "serve", str(serve_runs), "--port", str(port),
                             "--out", str(out / "files"), "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    yield proc, f"http://127.0.0.1:{port}/", out, log
    proc.terminate()
    proc.wait(20)
    log.seek(0)
    text = log.read()
    log.close()
    assert "Traceback" not in text, text


@pytest.fixture(scope="module")
def page(server, browser):
    """The server's URL once it answers (the browser starts while the server does); (url, output folder)."""
    proc, url, out, log = server
    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return url, out
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.seek(0)
                pytest.fail(f"difflab serve did not start:\n{log.read()}")
            time.sleep(0.25)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000",
                "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout, what):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except Exception:
        status = driver.execute_script("const s = document.querySelector('#status'); return s ? s.innerText : ''")
        pytest.fail(f"timed out waiting for {what}; the page's status says: {status!r}")


def _open(driver, url, run, kind):
    """Open the page and choose ``run`` (its name in the run list), a model of ``kind``."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#steps input").get_attribute("value"), STARTUP_S,
          "the run's default settings")
    driver.find_element(By.CSS_SELECTOR, "#run input").click()
    option = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'[role=option][aria-label="{run} ({kind})"]'),
                   10, f"{run} in the run list")
    option[0].click()
    _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#run-info").text.startswith(kind), 10, "the run's summary")


def _type(driver, elem_id, value):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    box.send_keys(str(value))
    box.send_keys(Keys.TAB)


def _image_bytes(driver, css) -> bytes:
    """The bytes behind the ``<img>`` shown at ``css`` (a served file or a data: URL)."""
    from selenium.webdriver.common.by import By

    src = driver.find_element(By.CSS_SELECTOR, css).get_attribute("src")
    if src.startswith("data:"):
        return base64.b64decode(src.split(",", 1)[1])
    with urllib.request.urlopen(src, timeout=10) as r:
        return r.read()


def test_the_page_draws_the_same_pixels_as_difflab_sample(page, browser, serve_runs, tmp_path, capsys):
    from selenium.webdriver.common.by import By

    url, out = page
    _open(browser, url, "runs/plain", "unconditional")
    # the controls of an unconditional run: no class, prompt, guidance or low-resolution input
    for hidden in ("class", "prompts", "guidance", "low-res-source", "grid-by-class"):
        assert not browser.find_elements(By.CSS_SELECTOR, f"#{hidden}") or \
            not browser.find_element(By.CSS_SELECTOR, f"#{hidden}").is_displayed(), hidden
    _type(browser, "steps", 5)
    _type(browser, "seed", 7)
    _type(browser, "n", 6)
    browser.find_element(By.CSS_SELECTOR, "#sample").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#dl-done"), SAMPLE_S, "the samples")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#result img"), 10, "the result image")
    shown = np.asarray(Image.open(io.BytesIO(_image_bytes(browser, "#result img"))))

    code = main(["sample", "--checkpoint", str(serve_runs / "plain"), "--steps", "5", "--seed", "7", "-n", "6",
                 "--out", str(tmp_path / "cli.png"), "--gif", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    expected = np.asarray(Image.open(tmp_path / "cli.png"))
    assert shown.shape == expected.shape and np.array_equal(shown, expected)
    # the page names the command it ran, and the files it wrote are the ones a user downloads
    command = browser.find_element(By.CSS_SELECTOR, "#command textarea").get_attribute("value")
    assert f"difflab sample --checkpoint {serve_runs / 'plain'} --sampler ddim --steps 5 --eta 0 --seed 7 -n 6 " \
           "--gif" in command
    grid = next((out / "files").glob("*/ddim-5steps-seed7.png"))
    assert np.array_equal(np.asarray(Image.open(grid)), expected)
    gif = Image.open(grid.with_suffix(".gif"))
    assert gif.n_frames == 6 == Image.open(tmp_path / "cli.gif").n_frames
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    browser.find_element(By.CSS_SELECTOR, "#download-grid").click()
    got = _wait(browser, lambda d: list(downloads.glob("*.png")), 20, "the downloaded grid")
    assert np.array_equal(np.asarray(Image.open(got[0])), expected)
    # the live previews show the last step's x_t and predicted x_0
    for live in ("#live-xt img", "#live-x0 img"):
        assert Image.open(io.BytesIO(_image_bytes(browser, live))).size[0] > 0
    # fully offline: every resource the page loaded came from the server itself
    hosts = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [h for h in hosts if not re.match(rf"^(data:|blob:|{re.escape(url)})", h)]
    assert hosts and not outside, outside


def test_a_bad_value_gets_a_clear_message_on_the_page(page, browser):
    from selenium.webdriver.common.by import By

    url, _ = page
    _open(browser, url, "runs/cond", "class-conditional")
    assert browser.find_element(By.CSS_SELECTOR, "#class").is_displayed()
    assert browser.find_element(By.CSS_SELECTOR, "#guidance").is_displayed()
    _type(browser, "steps", 0)
    browser.find_element(By.CSS_SELECTOR, "#sample").click()
    error = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#dl-error"), SAMPLE_S, "the error message")
    assert error[0].text == "Steps must be a whole number from 1 to 100, got 0"
    _type(browser, "steps", 3)
    _type(browser, "guidance", -2)
    browser.find_element(By.CSS_SELECTOR, "#sample").click()
    _wait(browser, lambda d: "Guidance weight must be a number >= 0" in d.find_element(By.CSS_SELECTOR, "#status").text,
          SAMPLE_S, "the guidance error")
    page = browser.page_source
    assert "Traceback" not in page and "Error" not in browser.find_element(By.TAG_NAME, "body").text
