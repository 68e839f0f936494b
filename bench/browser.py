"""A real browser for the console's tests and benchmark: Debian's Chromium driven by Selenium, and an ASGI
app served by uvicorn in a thread.

Never downloads anything: the browser is ``/usr/bin/chromium`` with ``/usr/bin/chromedriver`` (Debian's
``chromium`` and ``chromium-driver`` packages; ``EDGELOOP_CHROMIUM`` / ``EDGELOOP_CHROMEDRIVER`` override),
and Selenium Manager is told to stay offline. Headless, no sandbox (CI runs as root), no GPU, no background
networking, a fresh profile per browser.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["chromium_paths", "have_chromium", "start_chromium", "ServedApp", "wait_for"]


def chromium_paths() -> tuple[str | None, str | None]:
    browser = os.environ.get("EDGELOOP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    driver = os.environ.get("EDGELOOP_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return (browser if Path(browser).exists() else None), (driver if Path(driver).exists() else None)


def have_chromium() -> bool:
    b, d = chromium_paths()
    return bool(b and d)


def start_chromium(width: int = 1400, height: int = 1000) -> Any:
    """A headless Chromium under Selenium; ``quit()`` it (the profile directory goes with it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never fetch a browser or a driver
    browser, driver = chromium_paths()
    if not browser or not driver:
        raise FileNotFoundError("Chromium and chromedriver are needed (apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="edgeloop-chromium-")
    opts = Options()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
              f"--user-data-dir={profile}", f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    quit_ = drv.quit

    def quit_and_clean() -> None:
        try:
            quit_()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    drv.quit = quit_and_clean  # type: ignore[method-assign]
    return drv


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate()`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class ServedApp:
    """An ASGI app served by uvicorn on a free loopback port, in a daemon thread (a context manager)."""

    def __init__(self, app: Any, on_exit: Any = None) -> None:
        import uvicorn

        from deploy.broker import free_port

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, name="served-app", daemon=True)
        self.on_exit = on_exit  # e.g. Console.close_streams: end live streams so shutdown does not wait for them

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServedApp":
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), 30, what="uvicorn to start")
        if not self.server.started:
            raise RuntimeError("the app did not start (see the log)")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.on_exit is not None:
            self.on_exit()
            time.sleep(0.6)
        self.server.should_exit = True
        self.thread.join(10)
