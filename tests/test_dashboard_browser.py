"""The dashboard in a real browser: headless Chromium logs into the admin, opens the dashboard,
and sees tasks submitted over HTTP change the counts and the task list without a reload.

Playwright drives Debian's /usr/bin/chromium (no downloaded browser). The ORM is used only
before the browser starts: Playwright's sync API runs an event loop in this thread, and
Django refuses synchronous database calls from one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from django.contrib.auth.models import User

from tests import fixtures_functions as ff
from workers.serialization import serialize

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 20_000


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def submit(url: str, fn, *args) -> str:
    function_id = requests.post(f"{url}/register_function", json={"name": fn.__name__, "payload": serialize(fn)},
                                timeout=10).json()["function_id"]
    body = {"function_id": function_id, "payload": serialize((args, {}))}
    return requests.post(f"{url}/execute_function", json=body, timeout=10).json()["task_id"]


def count(page, status: str) -> int:
    return int(page.text_content(f"#faas-count-{status}"))


def test_dashboard_follows_tasks_live(stack, request):
    url = stack.web("daphne")
    stack.dispatcher("local", "-w", "2")
    User.objects.create_user("operator", password="operator-pw", is_staff=True)
    browser = request.getfixturevalue("browser")  # after the ORM work (see the module docstring)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(TIMEOUT_MS)

    page.goto(f"{url}/admin/login/?next=/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "operator-pw")
    page.click("input[type=submit]")
    page.click("text=Live dashboard")
    page.wait_for_selector("#faas-connection.faas-badge-live")
    assert count(page, "COMPLETED") == 0
    page.wait_for_selector("#faas-workers tr[data-alive=true]")  # the local pool is listed
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    for i in range(6):
        submit(url, ff.add, i, 1)
    slow = submit(url, ff.sleep_then, 1.5, "slow")
    failing = submit(url, ff.raise_value_error, "shown on the dashboard")
    page.wait_for_function("() => +document.getElementById('faas-count-COMPLETED').textContent >= 7")
    page.wait_for_function("() => +document.getElementById('faas-count-FAILED').textContent >= 1")
    page.wait_for_selector(f"#faas-tasks tr[data-task-id='{slow}'][data-status=COMPLETED]")
    page.wait_for_function("() => [...document.querySelectorAll('#faas-chart')].length && "
                           "+document.getElementById('faas-rate').textContent > 0")

    assert page.evaluate("window.__sameDocument") is True
    assert count(page, "COMPLETED") == 7 and count(page, "FAILED") == 1 and count(page, "QUEUED") == 0
    assert page.locator("#faas-tasks tr[data-task-id]").count() == 8
    assert "RUNNING \u2192 COMPLETED" in page.text_content(f"#faas-tasks tr[data-task-id='{slow}']")
    assert "ValueError: shown on the dashboard" in page.text_content(f"#faas-tasks tr[data-task-id='{failing}']")
    assert "alive" in page.text_content("#faas-workers")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
