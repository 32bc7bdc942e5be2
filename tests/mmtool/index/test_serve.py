"""`mmtool serve`: the JSON API, and the page end to end in headless Chromium (type a query, upload an image:
the expected thumbnail comes first)."""
import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from mmtool.data.reading.loader import resolve_shards
from mmtool.data.reading.sample_stream import parsed_samples
from mmtool.index import ImageIndex
from mmtool.index.server import make_server

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def served(emoji_shards, tiny_clip_checkpoint, tmp_path_factory):
    """(base url, index) of a server on a free port over the val emoji."""
    index, _ = ImageIndex.build(str(emoji_shards / "val-*.tar"), tiny_clip_checkpoint,
                                tmp_path_factory.mktemp("serve") / "index", progress=False)
    server = make_server(index, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", index
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def val_image(emoji_shards, tmp_path_factory):
    raw = next(parsed_samples(resolve_shards(str(emoji_shards / "val-*.tar")), Counter()))
    path = tmp_path_factory.mktemp("query") / "query.png"
    path.write_bytes(raw.image)
    return path


def get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_api_text_image_thumbnails_and_errors(served, val_image):
    base, index = served
    status, body = get(f"{base}/api/search?k=3&q=" + urllib.request.quote("grinning face"))
    hits = json.loads(body)
    assert status == 200 and [h["sha256"] for h in hits] == [h.sha256 for h in index.search(text="grinning face", k=3)]
    status, body = get(f"{base}/api/search-image?k=2", data=val_image.read_bytes())
    assert status == 200 and json.loads(body)[0]["score"] == pytest.approx(1, abs=1e-5)
    status, body = get(f"{base}/thumb/{hits[0]['sha256']}.jpg")
    assert status == 200 and body[:2] == b"\xff\xd8"  # a JPEG
    assert get(f"{base}/api/search?q=")[0] == 400
    assert get(f"{base}/api/search?q=cat&k=many")[0] == 400
    status, body = get(f"{base}/api/search-image", data=b"not an image")
    assert status == 400 and "query image: unreadable_image" in json.loads(body)["error"]
    assert get(f"{base}/thumb/{'0' * 64}.jpg")[0] == 404 and get(f"{base}/../index.json")[0] == 404


@pytest.mark.skipif(not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
                    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver); "
                           "scripts/setup.sh installs them")
@pytest.mark.browser
@pytest.mark.slow
def test_page_in_headless_chromium(served, val_image):
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    base, index = served
    # The page must show first the image the index ranks first (the model is untrained: not always the captioned one)
    caption = index.items[5]["caption"]
    top = index.search(text=caption, k=1)[0]
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(base + "/")
        wait = WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,))

        def first_hit(browser):
            hits = browser.find_elements(By.CSS_SELECTOR, "#results figure.hit")
            return hits[0] if hits else None

        driver.find_element(By.ID, "query").send_keys(caption + Keys.ENTER)
        wait.until(lambda b: first_hit(b) is not None and first_hit(b).get_attribute("data-sha256") == top.sha256)
        thumbnail = first_hit(driver).find_element(By.TAG_NAME, "img")
        wait.until(lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", thumbnail))
        assert top.caption in first_hit(driver).text

        query_sha = index.search(image=val_image, k=1)[0].sha256
        driver.find_element(By.ID, "upload").send_keys(str(val_image))
        # the image itself comes first, with cosine 1.000 (a text result never scores that)
        wait.until(lambda b: first_hit(b) is not None and first_hit(b).get_attribute("data-sha256") == query_sha
                   and "1.000" in first_hit(b).text)
    finally:
        driver.quit()
