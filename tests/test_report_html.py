"""tf_dtd.report.html: a self-contained page, checked in a real headless Chromium over CDP."""

import io
import re
import time

import numpy as np
import pytest
from headless_chromium import Chromium, find_chromium  # test machinery, no tests
from PIL import Image

import tf_dtd
from tf_dtd import visualize
from tf_dtd.errors import InvalidArgumentError

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run does)")

SUMS = np.array([0.5, 4.0, -1.0, 2.0])
NAMES = ["d", "b", "a", "c"]
ORDERS = {"index": [0, 1, 2, 3], "score": [2, 0, 3, 1], "class": [1, 3, 2, 0],
          "sum": [1, 3, 0, 2], "name": [2, 1, 3, 0]}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Four 8×8 samples whose classes, scores, sums and names sort differently."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 8)).astype("uint8")
    noise = rng.normal(size=(4, 8, 8, 1))
    heatmaps = noise - noise.mean(axis=(1, 2, 3), keepdims=True) + SUMS[:, None, None, None] / 64
    logits = np.full((4, 3), -2.0)
    logits[[0, 1, 2, 3], [2, 0, 1, 0]] = [5.0, 1.0, 9.0, 3.0]   # classes 2, 0, 1, 0
    path = tmp_path_factory.mktemp("report") / "report.html"
    assert tf_dtd.report.html(path, images, heatmaps, logits, names=NAMES, scale=12) == path
    return path, images, heatmaps


def test_page_is_self_contained(report):
    path, _, _ = report
    page = path.read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 12 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"https?:|<link|@import|url\(", page)
    assert "default-src 'none'" in page               # the browser refuses any other source


@needs_chromium
def test_page_in_headless_chromium(report):
    path, images, heatmaps = report
    colours = visualize.heatmap_to_rgb(heatmaps)
    pictures = np.repeat(images[..., None], 3, axis=-1)
    expected = {"input": pictures, "heatmap": colours,
                "overlay": np.stack([visualize.overlay(p, c) for p, c in zip(pictures, colours)])}
    with Chromium(width=1300, height=1000) as browser:
        browser.navigate(path.as_uri())
        assert browser.evaluate("document.images.length") == 12
        assert browser.evaluate(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth === 8)")
        assert rows(browser) == ORDERS["index"]
        # Where each picture of each row sits before sorting: row slot k from the top.
        slots = browser.evaluate("""Array.from(document.querySelectorAll('#rows tr')).map(r =>
            Array.from(r.querySelectorAll('img')).map(i => {
                const b = i.getBoundingClientRect();
                return [i.className, Math.round(b.left), Math.round(b.top),
                        Math.round(b.width)];}))""")
        assert all(width == 8 * 12 for slot in slots for _, _, _, width in slot)

        for key in ("score", "class", "sum", "name", "index"):
            link = browser.evaluate(f"""(() => {{
                const b = document.querySelector('nav a[href="#sort={key}"]')
                    .getBoundingClientRect();
                return [b.left + b.width / 2, b.top + b.height / 2]; }})()""")
            browser.click(*link)
            wait_until(browser, f"document.body.dataset.sortedBy === '{key}'")
            assert browser.evaluate("window.location.hash") == f"#sort={key}"
            assert rows(browser) == ORDERS[key], key
            if key in ("score", "class"):
                shot = np.asarray(Image.open(io.BytesIO(browser.screenshot())).convert("RGB"))
                for slot, sample in zip(slots, ORDERS[key]):
                    for kind, left, top, width in slot:
                        # Each image pixel is a 12×12 block on screen: read the block centres.
                        block = shot[top + 6:top + width:12, left + 6:left + width:12]
                        np.testing.assert_allclose(block, expected[kind][sample], atol=2,
                                                   err_msg=f"{key}: {kind} of sample {sample}")
        assert browser.problems() == []


@needs_chromium
def test_console_problems_are_caught(tmp_path):
    # The check above can fail: a page with a console error and an exception is caught.
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><p>x</p><script>console.error('custom failure');"
                    "undefinedFunction();</script>")
    with Chromium() as browser:
        browser.navigate(page.as_uri())
        problems = browser.problems()
    assert any("custom failure" in p for p in problems)
    assert any("undefinedFunction is not defined" in p for p in problems)


def test_arguments_are_checked(tmp_path):
    images, heatmaps, logits = np.zeros((2, 4, 4)), np.ones((2, 4, 4, 1)), np.zeros((2, 3))
    path = tmp_path / "r.html"
    with pytest.raises(InvalidArgumentError, match=r"Received: 2 images of shapes \[\(5, 4\)\]"):
        tf_dtd.report.html(path, np.zeros((2, 5, 4)), heatmaps, logits)
    with pytest.raises(InvalidArgumentError, match="Received: 1 images"):
        tf_dtd.report.html(path, images[:1], heatmaps, logits)
    with pytest.raises(InvalidArgumentError, match=r"logits of shape \(3, 3\)"):
        tf_dtd.report.html(path, images, heatmaps, np.zeros((3, 3)))
    with pytest.raises(InvalidArgumentError, match=r"class ids in \[0, 3\)"):
        tf_dtd.report.html(path, images, heatmaps, logits, targets=np.array([0, 3]))
    with pytest.raises(InvalidArgumentError, match="1 names for 2 samples"):
        tf_dtd.report.html(path, images, heatmaps, logits, names=["a"])
    mixed = [np.zeros((4, 4), "uint8"), np.full((4, 4, 3), 0.5)]    # gray and RGB may mix
    tf_dtd.report.html(path, mixed, heatmaps, logits, names=["<b>x</b>", "y & z"],
                       class_names=["cat", "dog", "<i>"], targets=np.array([1, 2]))
    page = path.read_text(encoding="utf-8")
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "y &amp; z" in page and "<b>x" not in page
    assert page.count("<tr data-index=") == 2 and ">dog</td>" in page and ">&lt;i&gt;</td>" in page


def rows(browser):
    return browser.evaluate(
        "Array.from(document.querySelectorAll('#rows tr')).map(r => Number(r.dataset.index))")


def wait_until(browser, condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not browser.evaluate(condition):
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.02)
