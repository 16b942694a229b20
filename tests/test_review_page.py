"""The review page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
it loads without console errors, shows one element per identity, and a swap made by clicking changes
the saved trajectories exactly as intended; undo restores them and a reload keeps the state."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.review_sessions import N_ANIMALS, SWAP_AT, serving, swapped_session

TOKEN = "page-test-token"
SCREENSHOTS = Path(os.environ.get("SHOAL_SCREENSHOTS", "/tmp/shoal-review-screenshots"))


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        message = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,950",
                 "--disable-gpu", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(options=options, service=Service(driver))


@pytest.fixture
def browser():
    chrome = _browser()
    chrome.set_page_load_timeout(30)
    yield chrome
    chrome.quit()


def _wait(browser, condition, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(lambda _: condition())


def _errors(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def _corrected(folder: Path) -> np.ndarray | None:
    path = folder / "trajectories_corrected" / "trajectories.npy"
    return np.load(path, allow_pickle=True).item()["trajectories"] if path.is_file() else None


def test_a_swap_made_in_the_page_is_saved_undone_and_kept_across_a_reload(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    folder, truth = swapped_session(tmp_path)
    tracked = np.load(folder / "trajectories" / "trajectories.npy", allow_pickle=True).item()["trajectories"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with serving(folder, token=TOKEN) as base:
        browser.get(f"{base}/?token={TOKEN}")
        _wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "[data-identity]")) == N_ANIMALS)
        assert browser.title.startswith("Shoal review")
        identities = browser.find_elements(By.CSS_SELECTOR, "[data-identity]")
        assert [element.get_attribute("data-identity") for element in identities] == ["1", "2", "3"]
        _wait(browser, lambda: browser.execute_script("return image !== null"))
        # the tracking's swap is among the doubtful moments (1 and 2 jump across the tank), and N goes there
        at_swap = f"return state.doubtful.some(m => Math.abs(m.start - {SWAP_AT}) <= 1 && m.identities.includes(1))"
        assert browser.execute_script(at_swap)
        assert browser.execute_script("return state.doubtful[0].kind") == "jump"  # the most doubtful
        browser.find_element(By.TAG_NAME, "body").send_keys("n")
        # N shows where the jump lands, the first frame the swap must cover, so a swap "from here" is right
        _wait(browser, lambda: browser.execute_script("return frame") == SWAP_AT)

        # select identity 1 and swap it with 2 from the frame shown on (both frame fields left empty)
        identities[0].click()
        Select(browser.find_element(By.ID, "other")).select_by_value("2")
        browser.find_element(By.ID, "swap").click()
        _wait(browser, lambda: _corrected(folder) is not None)
        np.testing.assert_allclose(_corrected(folder), truth)  # exactly the swap that was made
        _wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#history li")) == 1)
        browser.save_screenshot(str(SCREENSHOTS / "review_after_swap.png"))

        # undo from the keyboard: the corrected trajectories go, the originals never changed
        browser.find_element(By.TAG_NAME, "body").send_keys("\ue009z")  # Ctrl+Z
        _wait(browser, lambda: _corrected(folder) is None)
        np.testing.assert_array_equal(
            np.load(folder / "trajectories" / "trajectories.npy", allow_pickle=True).item()["trajectories"], tracked)
        _wait(browser, lambda: browser.find_element(By.ID, "redo").is_enabled())

        # redo, then reload: the page comes back with the swap applied and undo still possible
        browser.find_element(By.ID, "redo").click()
        _wait(browser, lambda: _corrected(folder) is not None)
        browser.refresh()
        _wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#history li")) == 1)
        assert browser.find_element(By.ID, "undo").is_enabled()
        x = browser.execute_script(f"return state.x[0][{SWAP_AT + 5}]")
        assert x == pytest.approx(truth[SWAP_AT + 5, 0, 0], abs=0.01)
        assert not browser.execute_script(at_swap)  # corrected: no jump left there
        browser.save_screenshot(str(SCREENSHOTS / "review_after_reload.png"))
        assert _errors(browser) == []
    log = json.loads((folder / "corrections.json").read_text())
    assert [entry["op"] for entry in log["entries"]] == ["swap", "undo", "redo"]
