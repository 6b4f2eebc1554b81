"""The upload page at / driven in headless Chromium (Debian's chromium + chromium-driver,
through Selenium; no browser download): upload an image, ask, see the answer and its box; attach
a video and see it in the conversation."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from mm15.serve.app import create_app
from mm15.serve.server import BackgroundServer
from mm15.services.checkpoint import load_checkpoint
from tests.serve_fixtures import Scripted, config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary on PATH (Debian: apt-get install chromium chromium-driver)",
)

ANSWER = "the square <250,250,750,750>."
RED = (228, 26, 28)  # the page's first palette colour (#e41a1c)
GREY = (128, 128, 128)
KEY = "browser-key"


@pytest.fixture(scope="module")
def server(tiny_ckpt_dir):
    model, tok = load_checkpoint(tiny_ckpt_dir)
    app = create_app(model, tok, config(api_key=KEY), generate_fn=Scripted(tok, ANSWER))
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        pytest.fail(
            "chromium is installed but chromedriver is not (apt-get install chromium-driver)"
        )
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    # An explicit driver path: Selenium Manager (which would try to download) is never run.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    yield driver
    driver.quit()


def _send(browser):
    """Click Send and wait until the answer is done or failed; the answer element."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.ID, "send").click()
    answer = browser.find_element(By.ID, "answer")
    WebDriverWait(browser, 20).until(
        lambda d: answer.get_attribute("data-state") in ("done", "error")
    )
    return answer


@pytest.mark.parametrize("stream", [True, False])
def test_upload_ask_and_see_the_box(server, browser, tmp_path, stream):
    from selenium.webdriver.common.by import By

    picture = tmp_path / "grey.png"
    Image.new("RGB", (200, 160), GREY).save(picture)
    browser.get(f"{server.url}/")
    browser.find_element(By.ID, "files").send_keys(str(picture))
    browser.find_element(By.ID, "question").send_keys("where is the square?")
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    if not stream:
        browser.find_element(By.ID, "stream").click()
    answer = _send(browser)
    status = browser.find_element(By.ID, "status").text
    assert answer.get_attribute("data-state") == "done", status
    assert answer.text == ANSWER
    items = browser.find_elements(By.CSS_SELECTOR, "#regions li")
    assert [i.text for i in items] == ["square — image 0, box [50, 40, 150.2, 120.16]"]
    # the box is drawn on the image: its left edge is red, its middle still grey
    pixel = (
        "const c = document.querySelector('#images canvas'); return Array.from("
        "c.getContext('2d').getImageData(arguments[0], arguments[1], 1, 1).data).slice(0, 3);"
    )
    assert tuple(browser.execute_script(pixel, 51, 80)) == RED
    assert tuple(browser.execute_script(pixel, 100, 80)) == GREY


def test_wrong_key_shows_the_error(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/")
    browser.find_element(By.ID, "question").send_keys("hello")
    browser.find_element(By.ID, "api-key").send_keys("wrong")
    answer = _send(browser)
    assert answer.get_attribute("data-state") == "error"
    assert "API key" in browser.find_element(By.ID, "status").text


@pytest.fixture(scope="module")
def video_server(tiny_ckpt_dir):
    """A scripted server that records how many tiles each prompt had."""
    model, tok = load_checkpoint(tiny_ckpt_dir)
    scripted, tiles = Scripted(tok, ANSWER), []

    def generate_fn(prompts, settings, on_token):
        tiles.extend(0 if p.pixels is None else p.pixels.shape[0] for p in prompts)
        return scripted(prompts, settings, on_token)

    app = create_app(model, tok, config(), generate_fn=generate_fn)
    with BackgroundServer(app) as srv:
        srv.tiles, srv.frames = tiles, model.cfg.video.num_frames
        yield srv


def test_attach_a_video_and_see_it_in_the_conversation(video_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    from tests.registry_fixtures import write_video

    clip = tmp_path / "clip.mp4"
    write_video(clip, frames=12, size=(32, 32))
    browser.get(f"{video_server.url}/")
    browser.find_element(By.ID, "video").send_keys(str(clip))
    browser.find_element(By.ID, "question").send_keys("what happens?")
    answer = _send(browser)
    status = browser.find_element(By.ID, "status").text
    assert answer.get_attribute("data-state") == "done", status
    assert answer.text == ANSWER
    # the server sampled the clip's frames, one tile each; the page shows the video it sent
    assert video_server.tiles == [video_server.frames]
    shown = browser.find_elements(By.CSS_SELECTOR, "#images video")
    assert len(shown) == 1 and shown[0].get_attribute("src").startswith("data:video/mp4;base64,")
