"""The HTML pages opened in a real browser (headless Chromium, driven by selenium): every image
loads, nothing is logged as an error, nothing is requested outside the page; a screenshot of
each is kept under test-artifacts/. Needs Debian's chromium and chromium-driver (`.ci/run`
installs them; elsewhere: `apt-get install chromium chromium-driver`); skipped without them."""

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import invoke, make_labeled_dir

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TINY = ["--image-size", "8", "--filters", "4,8", "--batch-size", "8"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                      "chromium-driver) for the browser tests")]


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1600"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def open_page(browser, page: Path, name: str) -> dict:
    browser.get_log("browser"), browser.get_log("performance")  # forget what came before
    browser.get(page.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete ? i.naturalWidth : -1]);")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests if m.get("method") == "Network.requestWillBeSent"]
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    return {"images": images, "errors": errors, "outside": [u for u in urls if not u.startswith(("file:", "data:"))]}


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    make_labeled_dir(root / "labeled", per_class=10, classes=("h", "v", "d"))
    results = root / "results.csv"
    assert invoke("pretrain", "--data", root / "labeled", "--out", root / "enc", "--epochs", "2",
                  "--objective", "autoencoder", "--results", results, *TINY).exit_code == 0
    for seed in (0, 1):
        for encoder, freeze in ((root / "enc", "all"), ("random", "none")):
            assert invoke("fine-tune", "--data", root / "labeled", "--encoder", encoder, "--freeze", freeze,
                          "--labels-per-class", "3", "--epochs", "2", "--seed", seed, "--results", results,
                          "--out", root / f"ft-{seed}-{freeze}", *TINY).exit_code == 0
    assert invoke("compare", "--results", results, "--html", root / "compare.html").exit_code == 0
    assert invoke("select", "--data", root / "labeled", "--encoder", root / "enc", "--labels", "6",
                  "--out", root / "to_label.csv", "--results", results).exit_code == 0
    return {"compare": root / "compare.html", "visualize": root / "enc" / "visualize" / "index.html",
            "select": root / "to_label.html"}


@pytest.mark.parametrize("name,least_images", [("compare", 1), ("visualize", 3), ("select", 1)])
def test_a_page_loads_every_image_with_no_error_and_nothing_from_outside(browser, pages, name, least_images):
    seen = open_page(browser, pages[name], name)
    assert len(seen["images"]) >= least_images, seen
    assert all(width > 0 for _, width in seen["images"]), seen["images"]
    assert seen["errors"] == [], seen["errors"]
    assert seen["outside"] == [], seen["outside"]
    assert (ARTIFACTS / f"{name}.png").stat().st_size > 1000
