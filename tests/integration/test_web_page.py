"""The web page at `/`, driven in a real headless Chromium (Debian's chromium + chromedriver)."""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.helpers.images import max_pixel_difference, pixels
from tests.helpers.live_service import DEFAULT_MODEL, SDXL_MODEL, RunningService

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
EXAMPLE = "a red circle on a white background"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if missing:
        pytest.fail(f"{missing} not installed: `make tools` installs Debian's chromium packages")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="sd-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def open_page(browser: webdriver.Chrome, service: RunningService) -> None:
    """The page, once its model picker has filled in the default model's settings."""
    browser.get(service.url + "/")
    WebDriverWait(browser, 30).until(
        lambda _: browser.find_element(By.ID, "form").get_attribute("data-model")
    )


def fill(browser: webdriver.Chrome, field: str, value: str) -> None:
    element = browser.find_element(By.ID, field)
    element.clear()
    element.send_keys(value)


def test_type_a_prompt_click_and_see_the_image(
    browser: webdriver.Chrome, service: RunningService
) -> None:
    open_page(browser, service)
    assert browser.title == "sd-serving"
    # The examples fill the prompt with captions the demo model (the default) draws.
    browser.find_element(By.CSS_SELECTOR, "button.example").click()
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == EXAMPLE
    fill(browser, "prompt", "a tiny red house")
    fill(browser, "steps", "6")
    fill(browser, "seed", "21")
    browser.find_element(By.ID, "generate").click()

    wait = WebDriverWait(browser, 120)
    image = wait.until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#gallery img"))
    )
    wait.until(lambda _: browser.execute_script("return arguments[0].naturalWidth", image) > 0)
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 128
    assert image.get_attribute("src").startswith(service.url + "/v1/images/")
    assert image.get_attribute("alt") == "a tiny red house"
    caption = browser.find_element(By.CSS_SELECTOR, "#gallery figcaption").text
    assert "seed 21" in caption and DEFAULT_MODEL in caption

    progress = browser.find_element(By.ID, "progress")
    # 6 steps of the model's own PNDM sampler are 7 UNet steps, as in diffusers' pipeline.
    assert progress.get_attribute("value") == progress.get_attribute("max") == "7"
    assert browser.find_element(By.ID, "preview").get_attribute("src").startswith("data:image/png")
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert browser.find_element(By.ID, "generate").is_enabled()


def test_a_bad_request_shows_the_server_message(
    browser: webdriver.Chrome, service: RunningService
) -> None:
    open_page(browser, service)
    fill(browser, "prompt", "a boat")
    fill(browser, "steps", "100000")
    browser.find_element(By.ID, "generate").click()
    error = WebDriverWait(browser, 60).until(
        expected_conditions.visibility_of_element_located((By.ID, "error"))
    )
    assert "steps" in error.text and "150" in error.text
    assert browser.find_elements(By.CSS_SELECTOR, "#gallery img") == []


def test_the_model_picker_lists_the_models_and_fills_in_each_ones_defaults(
    browser: webdriver.Chrome, service: RunningService
) -> None:
    open_page(browser, service)
    picker = Select(browser.find_element(By.ID, "model"))
    assert [option.text for option in picker.options] == [DEFAULT_MODEL, SDXL_MODEL]
    assert picker.first_selected_option.text == DEFAULT_MODEL  # the service's default
    assert browser.find_element(By.ID, "guidance_scale").get_attribute("value") == "7.5"

    picker.select_by_visible_text(SDXL_MODEL)
    form = browser.find_element(By.ID, "form")
    WebDriverWait(browser, 30).until(lambda _: form.get_attribute("data-model") == SDXL_MODEL)
    # SDXL's own defaults, from /v1/models/sdxl: guidance 5, its shipped Euler sampler.
    assert browser.find_element(By.ID, "guidance_scale").get_attribute("value") == "5"
    samplers = [o.text for o in Select(browser.find_element(By.ID, "scheduler")).options]
    assert samplers[0] == "default (EulerDiscreteScheduler)"
    assert {"dpmpp_2m_karras", "unipc", "euler_a"} <= set(samplers)

    fill(browser, "prompt", "a small green boat")
    fill(browser, "steps", "3")
    fill(browser, "seed", "4")
    browser.find_element(By.ID, "generate").click()
    caption = WebDriverWait(browser, 120).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#gallery figcaption"))
    )
    assert caption.text.startswith(f"{SDXL_MODEL} · seed 4")


def test_start_from_a_picture_and_get_the_edit_the_api_gives(
    browser: webdriver.Chrome, service: RunningService, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "start.png"
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(path)
    open_page(browser, service)
    fill(browser, "prompt", "a red circle")
    fill(browser, "steps", "6")
    fill(browser, "seed", "5")
    fill(browser, "strength", "0.5")
    browser.find_element(By.ID, "image").send_keys(str(path))  # the file chooser
    browser.find_element(By.ID, "generate").click()

    wait = WebDriverWait(browser, 120)
    image = wait.until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#gallery img"))
    )
    progress = browser.find_element(By.ID, "progress")
    # Strength 0.5 of 6 steps skips the first 3 of the model's PNDM schedule (7 UNet steps with
    # its warm-up), as diffusers' image-to-image pipeline does: 4 run.
    wait.until(lambda _: progress.get_attribute("value") == progress.get_attribute("max"))
    assert progress.get_attribute("max") == "4"
    shown = httpx.get(image.get_attribute("src"), timeout=30).content
    body = {"prompt": "a red circle", "steps": 6, "seed": 5, "strength": 0.5}
    body["image"] = base64.b64encode(path.read_bytes()).decode("ascii")
    direct = httpx.post(
        service.url + "/v1/generate", json=body, headers={"Accept": "image/png"}, timeout=120
    )
    assert max_pixel_difference(pixels(shown), pixels(direct.content)) <= 1


def test_pick_an_adapter_and_get_the_image_the_api_gives(
    browser: webdriver.Chrome, service: RunningService
) -> None:
    open_page(browser, service)
    Select(browser.find_element(By.ID, "model")).select_by_value(DEFAULT_MODEL)
    picker = Select(browser.find_element(By.ID, "lora"))
    WebDriverWait(browser, 30).until(lambda _: len(picker.options) > 1)
    assert "style-a" in [option.get_attribute("value") for option in picker.options]
    picker.select_by_value("style-a")
    fill(browser, "lora_scale", "0.8")
    fill(browser, "prompt", EXAMPLE)
    fill(browser, "steps", "4")
    fill(browser, "seed", "8")
    browser.find_element(By.ID, "generate").click()
    image = WebDriverWait(browser, 120).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#gallery img"))
    )
    shown = httpx.get(image.get_attribute("src"), timeout=30).content
    body = {"model": DEFAULT_MODEL, "prompt": EXAMPLE, "steps": 4, "seed": 8}
    adapted = httpx.post(
        service.url + "/v1/generate",
        json={**body, "loras": [{"name": "style-a", "scale": 0.8}]},
        headers={"Accept": "image/png"},
        timeout=120,
    )
    plain = httpx.post(
        service.url + "/v1/generate", json=body, headers={"Accept": "image/png"}, timeout=120
    )
    assert max_pixel_difference(pixels(shown), pixels(adapted.content)) <= 1
    assert max_pixel_difference(pixels(shown), pixels(plain.content)) > 10


def test_pick_a_model_version_and_get_the_image_that_version_gives(
    browser: webdriver.Chrome, service: RunningService
) -> None:
    """The default model has versions (tests/integration/conftest.py): the page offers them,
    sends `name@version`, and the caption names the version that answered; the image is rated
    with a corrected caption from under it."""
    open_page(browser, service)
    Select(browser.find_element(By.ID, "model")).select_by_value(DEFAULT_MODEL)
    picker = Select(browser.find_element(By.ID, "version"))
    WebDriverWait(browser, 30).until(lambda _: len(picker.options) > 1)
    assert [option.get_attribute("value") for option in picker.options] == ["", "1", "2", "3"]
    assert picker.options[0].text == "champion 1"
    picker.select_by_value("2")
    fill(browser, "prompt", EXAMPLE)
    fill(browser, "steps", "4")
    fill(browser, "seed", "9")
    browser.find_element(By.ID, "generate").click()
    image = WebDriverWait(browser, 120).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#gallery img"))
    )
    caption = browser.find_element(By.CSS_SELECTOR, "#gallery figcaption")
    assert caption.text.startswith(f"{DEFAULT_MODEL}@2 · seed 9")
    shown = httpx.get(image.get_attribute("src"), timeout=30).content
    version_2 = httpx.post(
        service.url + "/v1/generate",
        json={"model": f"{DEFAULT_MODEL}@2", "prompt": EXAMPLE, "steps": 4, "seed": 9},
        headers={"Accept": "image/png"},
        timeout=120,
    )
    assert version_2.headers["x-model-version"] == "2"
    assert max_pixel_difference(pixels(shown), pixels(version_2.content)) <= 1

    # Rate it: a corrected caption and 👎; the service keeps it with what made the image.
    figure = browser.find_element(By.CSS_SELECTOR, "#gallery figure")
    figure.find_element(By.CSS_SELECTOR, ".rate input").send_keys("a red square")
    figure.find_element(By.CSS_SELECTOR, ".rate button[data-rating='1']").click()
    said = figure.find_element(By.CSS_SELECTOR, ".rate .rated")
    WebDriverWait(browser, 30).until(lambda _: said.text != "")
    assert said.text == "thanks: rated 1"
    rows = httpx.get(service.url + "/v1/feedback", timeout=30).json()["feedback"]
    digest = image.get_attribute("src").rsplit("/", 1)[1].split(".")[0]
    [row] = [row for row in rows if row["image"] == digest]
    assert (row["rating"], row["caption"]) == (1, "a red square")
    made = row["provenance"]
    assert (made["model_version"], made["prompt"], made["seed"]) == ("2", EXAMPLE, 9)


def test_draw_a_mask_over_the_picture_and_get_the_inpainting_the_api_gives(
    browser: webdriver.Chrome, service: RunningService, tmp_path: Path
) -> None:
    rng = np.random.default_rng(4)
    path = tmp_path / "start.png"
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(path)
    open_page(browser, service)
    Select(browser.find_element(By.ID, "model")).select_by_value(DEFAULT_MODEL)
    fill(browser, "prompt", EXAMPLE)
    fill(browser, "steps", "4")
    fill(browser, "seed", "6")
    browser.find_element(By.ID, "image").send_keys(str(path))
    painter = browser.find_element(By.ID, "painter")
    WebDriverWait(browser, 30).until(lambda _: painter.is_displayed())
    stroke = ActionChains(browser).move_to_element_with_offset(painter, -60, -60).click_and_hold()
    stroke.move_by_offset(60, 30).move_by_offset(40, 40).release().perform()
    drawn = browser.execute_script(
        "return document.getElementById('mask_canvas').toDataURL('image/png')"
    )
    mask = pixels(base64.b64decode(drawn.split(",", 1)[1]))
    assert 0 < (mask[..., 0] == 255).mean() < 0.6  # a stroke: some of the picture, not all
    browser.find_element(By.ID, "generate").click()
    image = WebDriverWait(browser, 120).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#gallery img"))
    )
    shown = httpx.get(image.get_attribute("src"), timeout=30).content
    body = {"model": DEFAULT_MODEL, "prompt": EXAMPLE, "steps": 4, "seed": 6, "mask": drawn}
    body["image"] = base64.b64encode(path.read_bytes()).decode("ascii")
    direct = httpx.post(
        service.url + "/v1/generate", json=body, headers={"Accept": "image/png"}, timeout=120
    )
    assert direct.status_code == 200, direct.text
    assert max_pixel_difference(pixels(shown), pixels(direct.content)) <= 1
