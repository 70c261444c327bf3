"""Screenshot `mlflow ui` on a runs directory's tracking store for the README (docs/mlflow-runs.png).

    .venv/bin/python scripts/mlflow_screenshot.py runs docs/mlflow-runs.png

Starts `mlflow ui` on 127.0.0.1 on the runs directory's SQLite store, opens the sftjudge experiment's run list in
headless Chromium (`make browser` installs it), waits for the table, saves the screenshot, and stops the server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def main() -> int:
    runs, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen([mlflow, "ui", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri",
                               f"sqlite:///{runs / 'mlflow.db'}", "--default-artifact-root",
                               str(runs / "mlartifacts")], start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        from mlflow.tracking import MlflowClient
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        experiment = MlflowClient(tracking_uri=url).get_experiment_by_name("sftjudge").experiment_id
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,900"):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            browser.get(f"{url}/#/experiments/{experiment}/runs?compareRunsMode=CHART")
            time.sleep(int(os.environ.get("SCREENSHOT_WAIT", "12")))  # the React app renders its charts late
            browser.save_screenshot(str(out))
        finally:
            browser.quit()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
