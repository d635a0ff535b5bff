"""The dashboard in a real headless Chromium, driven by selenium over a real uvicorn
server: sign in with an API token, read the overview (its counts equal the API's), press
Rotate, read the dry run, confirm, and watch the htmx timeline reach `completed`; then,
as a second person, approve a supervised rotation waiting in the queue.

Debian's `chromium` and `chromium-driver` are required: `scripts/test` installs them
when it runs as root. The test fails, never skips, without them. Each page's screenshot
is saved under `test-artifacts/screenshots/` (or $KEYSHIFT_TEST_ARTIFACTS).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from keyshift.api import create_app
from keyshift.service import identities
from keyshift.store.store import Store
from tests.engine.test_governance import GROUPS
from tests.helpers import json_value, write_estate
from tests.servers import serve

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("KEYSHIFT_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "screenshots"
WAIT = 30.0


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
        )
        if found:
            return found
    pytest.fail(
        f"none of {', '.join(names)} is installed: install Debian's chromium and "
        "chromium-driver (scripts/test does so when run as root)"
    )


@pytest.fixture
def chrome() -> Iterator[WebDriver]:
    """Headless Chromium with an empty profile, no background traffic."""
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    profile = tempfile.mkdtemp(prefix="keyshift-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(_binary("chromedriver")))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver: WebDriver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SHOTS / f"{name}.png")), name


def wait_for(driver: WebDriver, css: str, attribute: str, value: str) -> None:
    """Wait until the element `css` has `attribute` equal to `value` (htmx swaps it)."""
    # htmx replaces the element while it is polled: a lookup may hold the old one.
    WebDriverWait(
        driver, WAIT, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    ).until(
        lambda d: d.find_element(By.CSS_SELECTOR, css).get_attribute(attribute) == value,
        f"{css} never had {attribute}={value}",
    )


def arrive(driver: WebDriver, path: str) -> None:
    """Wait until the browser has loaded a page whose URL holds `path` (after a click)."""
    WebDriverWait(driver, WAIT, poll_frequency=0.05).until(
        lambda d: (
            path in d.current_url and d.execute_script("return document.readyState") == "complete"
        ),
        f"the browser never reached {path}",
    )


def sign_in(driver: WebDriver, base: str, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base}/")
    assert "/login" in driver.current_url  # no session: the sign-in form
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, WAIT).until(lambda d: d.find_elements(By.ID, "counts"))
    arrive(driver, "/")


def _estate(tmp: Path) -> dict[str, Any]:
    """`api-key` rotates at once; `billing-db` waits for one approver of the on-call group."""
    estate: dict[str, Any] = json.loads(
        write_estate(tmp, policy={"grace_period": "0s", "max_lifetime": "90d"}).read_text()
    )
    supervised = tmp / "supervised"
    supervised.mkdir()
    second = json.loads(write_estate(supervised, name="billing-db").read_text())["credentials"][0]
    second["owner"] = "team-payments"
    second["policy"] = {
        "grace_period": "0s",
        "approval": {"approvers": ["group:platform-oncall"], "min_approvals": 1},
    }
    estate["credentials"].append(second)
    estate["governance"] = {"groups": GROUPS}
    return estate


def test_sign_in_rotate_and_approve_in_a_real_browser(
    chrome: WebDriver, store: Store, tmp_path: Path
) -> None:
    tokens = {}
    for name, role in (("otto", "operator"), ("alice", "approver")):
        identities.add_principal(store, name=name, kind="user", roles=[role], actor="test")
        tokens[name] = identities.create_token(store, name, name="web", actor="test").token.reveal()
    with ExitStack() as stack:
        base = stack.enter_context(serve(create_app(store)))
        api = stack.enter_context(
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tokens['otto']}"})
        )
        assert api.post("/v1/estate/apply", json=_estate(tmp_path)).status_code == 200

        sign_in(chrome, base, tokens["otto"])
        shot(chrome, "01-overview")
        expected = api.get("/v1/overview").json()
        counts = {
            e.get_attribute("id"): int(e.text)
            for e in chrome.find_elements(By.CSS_SELECTOR, "#counts .n")
        }
        assert counts == {
            "count-total": expected["total"],
            **{f"count-within-{d}": expected["within"][str(d)] for d in (7, 30, 90)},
            "count-expired": expected["expired"],
            "count-in-grace": expected["in_grace"],
            "count-rotating": expected["rotating"],
            "count-needs-attention": expected["needs_attention"],
            "count-awaiting-approval": expected["awaiting_approval"],
        }
        assert expected["total"] == 2

        chrome.find_element(By.LINK_TEXT, "Credentials").click()
        arrive(chrome, "/credentials")
        rows = chrome.find_elements(By.CSS_SELECTOR, "#credentials tr[data-credential]")
        assert sorted(r.get_attribute("data-credential") for r in rows) == ["api-key", "billing-db"]
        shot(chrome, "02-credentials")

        chrome.find_element(By.LINK_TEXT, "api-key").click()
        arrive(chrome, "/credentials/api-key")
        shot(chrome, "03-credential")
        chrome.find_element(By.ID, "rotate").click()
        arrive(chrome, "/credentials/api-key/dry-run")
        preflight = chrome.find_elements(By.CSS_SELECTOR, "#preflight .pill")
        assert [p.text for p in preflight] == ["ready"] * 4
        shot(chrome, "04-dry-run")
        chrome.find_element(By.ID, "reason").send_keys("quarterly rotation")
        chrome.find_element(By.ID, "confirm").click()
        chrome.find_element(By.ID, "start").click()
        arrive(chrome, "/rotations/")
        wait_for(chrome, "#timeline", "data-state", "completed")
        assert chrome.find_element(By.ID, "rollout").text == "2 of 2 delivered"
        titles = chrome.find_element(By.ID, "steps").text
        assert "Write file" in titles
        assert "Preflight every step" in titles
        shot(chrome, "05-rotation")
        value = json_value(tmp_path / "app.json")
        assert value
        assert value not in chrome.page_source

        # A supervised rotation waits for a second person.
        started = api.post("/v1/credentials/billing-db/rotations", json={"reason": "pci"})
        assert started.status_code == 202, started.text
        rotation_id = started.json()["rotation_id"]
        chrome.get(f"{base}/rotations/{rotation_id}")
        wait_for(chrome, "#timeline", "data-rest", "yes")
        assert chrome.find_element(By.ID, "state").text == "awaiting_approval"
        chrome.find_element(By.ID, "logout").click()
        arrive(chrome, "/login")

        sign_in(chrome, base, tokens["alice"])
        assert chrome.find_element(By.ID, "count-awaiting-approval").text == "1"
        chrome.find_element(By.LINK_TEXT, "Approvals").click()
        arrive(chrome, "/approvals")
        [card] = chrome.find_elements(By.CSS_SELECTOR, "[data-approval]")
        assert "billing-db" in card.text
        assert "Rollback plan" in card.text
        shot(chrome, "06-approvals")
        card.find_element(By.NAME, "comment").send_keys("change CHG-42")
        card.find_element(By.CSS_SELECTOR, "button.approve").click()
        arrive(chrome, f"/rotations/{rotation_id}")
        wait_for(chrome, "#timeline", "data-state", "completed")
        shot(chrome, "07-approved-rotation")

        for path, name in (
            ("/entra", "08-entra"),
            ("/alerts", "09-alerts"),
            ("/audit", "10-audit"),
        ):
            chrome.get(f"{base}{path}")
            shot(chrome, name)
        chrome.find_element(By.ID, "verify").click()
        arrive(chrome, "/audit/verify")
        assert chrome.find_element(By.ID, "chain-result").get_attribute("data-ok") == "yes"
        shot(chrome, "11-audit-verified")
        for secret in (value, json_value(tmp_path / "supervised" / "app.json"), *tokens.values()):
            assert secret
            assert secret not in chrome.page_source
