"""Debian's headless Chromium, driven by Selenium, for the tests that look at the course the way a learner does
(tests/test_widgets_in_browser.py: the widgets in JupyterLab; tests/test_site.py: the built site).

Chromium and its driver come from Debian's packages (`apt-get install chromium chromium-driver`, which `.ci/run` does
when they are missing); nothing is downloaded: the driver's path is given, so Selenium Manager is never asked."""
import json
import os
import shutil
import socket
import urllib.parse

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def available():
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements.txt)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


def skip_or_fail():
    """In CI (CI=true) a missing browser is a failure; on a learner's laptop the browser tests are skipped."""
    why = available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def chrome(width=1400, height=1000):
    """A headless Chromium that records every request it makes (see `requests_made`). The flags are the ones this
    closed network needs: without the background-networking ones Chromium keeps trying to reach Google's hosts."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--disable-extensions", "--disable-default-apps",
                 f"--window-size={width},{height}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def requests_made(driver):
    """The URLs the page asked for since the last call (Chrome's DevTools performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def off_machine(urls):
    """The requests that would leave this machine (anything but file:, data:, blob:, about: and loopback)."""
    out = []
    for u in urls:
        p = urllib.parse.urlparse(u)
        if p.scheme in ("file", "data", "blob", "about", "chrome", "devtools", ""):
            continue
        if p.hostname in ("127.0.0.1", "localhost", "::1"):
            continue
        out.append(u)
    return out


def free_port():
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
