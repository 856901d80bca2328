"""Headless Chromium through Selenium for the UI tests, or the reason it cannot start here.

Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs them) and the
``selenium`` package (the ``test`` extra). The window is wide enough for the runs table's ablation
columns: ag-grid renders only the columns in view.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

CHROMIUM_HINT = "apt-get install chromium chromium-driver; pip install selenium"
WINDOW = (2400, 1100)


def chromium_paths() -> tuple[str | None, str | None]:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    return browser, shutil.which("chromedriver")


def browser_available() -> tuple[bool, str]:
    """Whether a headless Chromium can be driven here, and why not."""
    browser, driver = chromium_paths()
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    return (not missing, f"no headless browser ({CHROMIUM_HINT}); missing: {', '.join(missing)}" if missing else "")


def start_chromium() -> Any:
    """A headless Chromium WebDriver (caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}"):  # fmt: skip
        options.add_argument(arg)
    options.binary_location = str(browser)
    return webdriver.Chrome(service=Service(str(driver)), options=options)


def wait_for(check: Callable[[], Any], timeout_s: float = 90.0, what: str = "the page") -> Any:
    """``check()``'s first truthy answer, polled every half second (the UI loads data after the page)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            answer = check()
        except Exception:  # an element that is not there yet, or re-rendered while read
            answer = None
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)
