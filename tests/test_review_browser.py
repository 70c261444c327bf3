"""The review page in a real headless browser (Debian's chromium through selenium): `sftjudge review` started as a
user would, grading with the keyboard, a reload half-way, then the saved labels and the agreement.

`make test` installs chromium and its driver (Makefile `browser`); without them this test fails rather than skips.
Set SFTJUDGE_SCREENSHOT=docs/review-page.png to write the README's screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from review_kit import judged_run

from sftjudge.run import files
from sftjudge.run.io import read_jsonl

SCORES = [9.5, 8.0, 6.5, 4.0, 2.5, 1.5]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromedriver are missing: `make browser` installs them (Debian apt)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


@pytest.fixture
def served_review(tmp_path):
    runs = tmp_path / "runs"
    champion = judged_run(runs, "champ", SCORES)
    run = judged_run(runs, "r2", SCORES, champion=champion.path, outcomes=["win", "win", "tie", "loss", "win", "loss"],
                     sample_size=6, min_items=6)
    env = {**os.environ, "SFTJUDGE_HOME": str(tmp_path / "home")}
    server = subprocess.Popen([sys.executable, "-m", "sftjudge.cli", "review", "r2", "--runs-dir", str(runs),
                               "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    first = server.stdout.readline().decode()  # "review r2: http://127.0.0.1:PORT/#token=KEY  (...)"
    assert "#token=" in first, first + server.stdout.read().decode()
    url = first.split()[2]
    base, token = url.split("#token=")
    for _ in range(100):
        try:
            urllib.request.urlopen(urllib.request.Request(base + "api/sample", headers={"X-Review-Token": token}),
                                   timeout=2)
            break
        except OSError:
            assert server.poll() is None, server.stdout.read().decode()
            time.sleep(0.2)
    yield run, url
    os.killpg(server.pid, signal.SIGINT)
    server.wait(timeout=30)


def ready(browser, url):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 20).until(lambda b: b.find_element("tag name", "body").get_attribute("data-ready") == "yes")


def press(browser, *keys):
    from selenium.webdriver.common.action_chains import ActionChains

    for key in keys:
        ActionChains(browser).send_keys(key).perform()
        time.sleep(0.15)  # each key is one label request: let it land before the next


def wait_for(browser, element_id, expected):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10).until(lambda b: expected in b.find_element("id", element_id).get_attribute("textContent"))


def settled(browser) -> None:
    """Every label the page sent has been answered."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10).until(
        lambda b: b.find_element("tag name", "body").get_attribute("data-pending") in (None, "0"))


def text(browser, element_id) -> str:
    """An element's text as written (its CSS may show it in capitals)."""
    return browser.find_element("id", element_id).get_attribute("textContent")


def test_grading_with_the_keyboard_survives_a_reload(browser, served_review):
    from selenium.webdriver.common.keys import Keys

    run, url = served_review
    ready(browser, url)
    wait_for(browser, "progress", "0 / 6 labelled")
    plan = {}  # item id -> (passed, grade, chose the first answer)
    for n in range(3):
        item_id = text(browser, "position").split(", ")[1].rstrip(")")
        plan[item_id] = (n != 1, n + 2, True)
        press(browser, "p" if n != 1 else "f", str(n + 2), "a")
        wait_for(browser, "progress", f"{n + 1} / 6 labelled")
        press(browser, Keys.ARROW_RIGHT)

    browser.refresh()  # a closed tab, a reload: the labels are on disk, the page resumes at the first open item
    ready(browser, url)
    wait_for(browser, "progress", "3 / 6 labelled")
    assert text(browser, "position").startswith("(4 of 6")
    for n in range(3, 6):
        item_id = text(browser, "position").split(", ")[1].rstrip(")")
        plan[item_id] = (True, 5, False)
        press(browser, "p", "5", "b")
        if n == 5:
            press(browser, "n")
            browser.find_element("id", "note").send_keys("the last one")
            press(browser, Keys.ESCAPE)
        wait_for(browser, "progress", f"{n + 1} / 6 labelled")
        press(browser, Keys.ARROW_RIGHT)
    settled(browser)
    if os.environ.get("SFTJUDGE_SCREENSHOT"):
        press(browser, Keys.ARROW_LEFT, Keys.ARROW_LEFT)
        browser.save_screenshot(os.environ["SFTJUDGE_SCREENSHOT"])

    sample = {item["id"]: item for item in read_jsonl(run / files.REVIEW_SAMPLE)}
    labels = {label["id"]: label for label in read_jsonl(run / files.REVIEW_LABELS)}
    assert set(labels) == set(plan) == set(sample)
    for item_id, (passed, grade, chose_first) in plan.items():
        label = labels[item_id]
        assert (label["passed"], label["grade"]) == (passed, grade), item_id
        # "first" on the page is this run's answer exactly when the sample put it first.
        assert label["choice"] == ("run" if chose_first == sample[item_id]["run_first"] else "champion"), item_id
    assert any(label["note"] == "the last one" for label in labels.values())

    agreement = json.loads((run / files.REVIEW_AGREEMENT).read_text())
    assert agreement["pass_fail"]["items"] == 6 and agreement["grades"]["items"] == 6
    assert agreement["pairwise"]["items"] == 6 and agreement["lines"][0].startswith(("calibrated", "not calibrated"))
    judge_passes = {i: sample[i]["judge_score"] >= 7.0 for i in sample}
    expected = sum(judge_passes[i] == plan[i][0] for i in plan) / 6
    assert agreement["pass_fail"]["agreement"] == pytest.approx(expected, abs=1e-4)
