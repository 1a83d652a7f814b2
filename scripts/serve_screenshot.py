"""Screenshots of the `rnnkit serve` page for docs/serve.md, taken in Debian's headless chromium.

    python scripts/serve_screenshot.py BUNDLE [--out docs/img]

Starts `rnnkit serve BUNDLE` on a free port, types a review, and saves the page after "Classify"
(``serve-page.png``) and after "Highlight words" when the model can explain (``serve-explain.png``).
Needs chromium + chromedriver (/usr/bin) and selenium (the `test` extra).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

TEXT = "a gripping , beautifully acted film that earns every one of its tears"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--out", default="docs/img")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "rnnkit.toolkit", "serve", f"sentiment={args.bundle}", "--port", str(port)]
    )
    profile = tempfile.mkdtemp(prefix="rnnkit-chromium-")
    driver = None
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=900,640",
            "--hide-scrollbars",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        wait = WebDriverWait(driver, 30)
        driver.get(url + "/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        driver.find_element(By.ID, "text").send_keys(TEXT)
        driver.find_element(By.ID, "run").click()
        wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-answer"))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out / "serve-page.png"))
        print(out / "serve-page.png")
        explain = driver.find_element(By.ID, "explain")
        if explain.is_displayed():
            explain.click()
            wait.until(lambda d: "method:" in d.find_element(By.ID, "result").text)
            driver.save_screenshot(str(out / "serve-explain.png"))
            print(out / "serve-explain.png")
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        server.send_signal(signal.SIGTERM)
        server.wait(60)


if __name__ == "__main__":
    main()
