"""The web viewer in a real browser: ``seglab serve`` (uvicorn, in its own process) and headless Chromium driven by
Selenium through chromedriver. The page uploads an image, shows the overlay, the legend with class shares and the
uncertainty map, and offers the mask for download: the same bytes ``seglab predict`` writes.

Debian's ``chromium`` and ``chromium-driver`` are needed (``.ci/run`` installs them); without them the test is
skipped on a developer machine, saying how to install them, and fails in CI (``CI=true``).

Screenshots: ``$SEGLAB_SCREENSHOT_DIR`` (if set) receives ``viewer.png`` (and ``report.png`` when
``$SEGLAB_REPORT_HTML`` names a report to show); ``$SEGLAB_VIEWER_CHECKPOINT`` and ``$SEGLAB_VIEWER_IMAGE`` put a
trained model and a real image on the page instead of the random model (the pictures in docs/serve.md and
docs/report.md are made so).
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver (Debian), then pip install selenium"


def _browser_missing() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    return f"{', '.join(missing)} not found; install with: {INSTALL}" if missing else None


@pytest.fixture(scope="module")
def browser():
    why = _browser_missing()
    if why:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs the real-browser test: {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,820",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    own = os.environ.get("SEGLAB_VIEWER_CHECKPOINT")
    if own:
        return Path(own)
    from seglab.checkpoint import CheckpointMeta, save_checkpoint
    from seglab.models.factory import create_model

    torch.manual_seed(0)
    params = {"depth": 2, "base_channels": 4, "dropout": 0.3}
    model = create_model("unet", num_classes=3, in_channels=3, **params).eval()
    meta = CheckpointMeta(
        arch="unet",
        num_classes=3,
        in_channels=3,
        model_params=params,
        class_names=["background", "circle", "square"],
        mean=[0.5] * 3,
        std=[0.25] * 3,
        palette=[[0, 0, 0], [230, 25, 75], [60, 180, 75]],
    )
    return save_checkpoint(tmp_path_factory.mktemp("viewer") / "best", model, meta)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    own = os.environ.get("SEGLAB_VIEWER_IMAGE")
    if own:
        return Path(own)
    from seglab.data.synthetic import write_folder

    root = write_folder(tmp_path_factory.mktemp("viewer-data") / "data", num_images=4, size=96)
    return sorted((root / "images").iterdir())[0]


@pytest.fixture(scope="module")
def server(checkpoint: Path):
    """``seglab serve`` on a free port of 127.0.0.1, up until the module's tests end."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "seglab", "serve", str(checkpoint), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "health", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"seglab serve did not start: {proc.stdout.read().decode()[-2000:]}")
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


def _wait(driver, condition: str, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(f"return Boolean({condition})"))


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    out = os.environ.get("SEGLAB_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(out) / name)
    return path


def test_viewer_uploads_shows_overlay_legend_uncertainty_and_download(
    browser, server, checkpoint, image, tmp_path
) -> None:
    from selenium.webdriver.common.by import By

    from seglab.checkpoint import read_meta
    from seglab.engine.predict import predict

    meta = read_meta(checkpoint)
    browser.get(server)
    _wait(browser, "document.querySelectorAll('#legend li').length > 0")  # GET /model answered
    names = [
        li.find_element(By.CSS_SELECTOR, ".name").text
        for li in browser.find_elements(By.CSS_SELECTOR, "#legend li")
    ]
    assert names == meta.class_names

    browser.find_element(By.ID, "file").send_keys(str(image.resolve()))
    _wait(
        browser, "document.body.dataset.state === 'done' && document.getElementById('layer').naturalWidth > 0"
    )
    w, h = Image.open(image).size
    assert browser.execute_script(
        "return [document.getElementById('layer').naturalWidth, "
        "document.getElementById('layer').naturalHeight]"
    ) == [w, h]
    # the legend now carries each class's share of the predicted pixels; together 100 %
    shares = [
        li.find_element(By.CSS_SELECTOR, ".share").text
        for li in browser.find_elements(By.CSS_SELECTOR, "#legend li")
    ]
    assert all(s.endswith("%") for s in shares)
    assert sum(float(s.rstrip(" %")) for s in shares) == pytest.approx(100, abs=0.1 * len(shares))

    # the download is the very mask seglab predict writes
    (record,) = predict(checkpoint, [image], tmp_path / "pred", progress=False)
    href = browser.find_element(By.ID, "download").get_attribute("href")
    assert href.startswith("data:image/png;base64,")
    assert base64.b64decode(href.split(",", 1)[1]) == Path(record["mask"]).read_bytes()
    predicted = np.array(Image.open(record["mask"]))
    counts = np.bincount(predicted.ravel(), minlength=meta.num_classes) / predicted.size
    assert [float(s.rstrip(" %")) for s in shares] == pytest.approx(list(100 * counts), abs=0.051)

    # the opacity slider drives the layer's opacity
    browser.execute_script(
        "const s = document.getElementById('opacity'); s.value = 25; s.dispatchEvent(new Event('input'));"
    )
    assert float(browser.find_element(By.ID, "layer").value_of_css_property("opacity")) == pytest.approx(0.25)
    browser.execute_script(
        "const s = document.getElementById('opacity'); s.value = 60; s.dispatchEvent(new Event('input'));"
    )
    _screenshot(browser, tmp_path, "viewer.png")

    # the uncertainty toggle asks for the TTA entropy map and shows it instead of the classes
    browser.find_element(By.ID, "show-uncertainty").click()
    _wait(
        browser,
        "document.body.dataset.state === 'done' && !document.getElementById('uncertainty').hidden "
        "&& document.getElementById('uncertainty').naturalWidth > 0",
    )
    assert "mean entropy" in browser.find_element(By.ID, "status").text
    _screenshot(browser, tmp_path, "viewer-uncertainty.png")

    # a file that is not an image is refused with the service's message, on the page
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    _wait(browser, "document.body.dataset.state === 'error'")
    assert browser.find_element(By.ID, "status").text.startswith("400: cannot read")
    assert urllib.request.urlopen(server + "health").status == 200


@pytest.fixture(scope="module")
def report_html(shapes_dir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$SEGLAB_REPORT_HTML``, or the report of a tiny U-Net trained for one epoch on the 32x32 shapes."""
    own = os.environ.get("SEGLAB_REPORT_HTML")
    if own:
        return Path(own)
    from seglab.config import Config
    from seglab.engine.train import train
    from seglab.reports.report import write_report

    out = tmp_path_factory.mktemp("report")
    cfg = Config().override(
        [
            f"data.root={shapes_dir}",
            f"train.out_dir={out / 'run'}",
            "train.epochs=1",
            "model.params={depth: 2, base_channels: 4}",
            "train.progress=false",
        ]
    )
    return Path(write_report(train(cfg).run_dir, out=out / "report", progress=False)["html"])


def test_report_renders_offline_in_a_browser(browser, report_html, tmp_path) -> None:
    """The report opens from disk with the network unused: every figure decodes, every section is there."""
    from selenium.webdriver.common.by import By

    from seglab.reports.html import SECTIONS

    browser.get(report_html.resolve().as_uri())
    _wait(browser, "document.readyState === 'complete'")
    sizes = browser.execute_script("return [...document.images].map(i => [i.complete, i.naturalWidth])")
    assert len(sizes) == 6 and all(done and width > 100 for done, width in sizes)
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert [h.split(". ", 1)[1] for h in headings] == list(SECTIONS.values())
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(not r.startswith("http") for r in resources), resources  # nothing fetched from anywhere
    _screenshot(browser, tmp_path, "report.png")
