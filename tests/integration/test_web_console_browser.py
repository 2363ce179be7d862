"""The web console in a real browser (Debian's Chromium driven by Playwright) against a real
city: two roles log in, an alarm raised by the room arrives live and is acknowledged from
the keyboard (and refused to a role that may not), the page has no serious accessibility
violation, and when the leading post is killed the banner shows the failover, then the
new leader, with no reload and no new login. Screenshots of each page are kept as test
artefacts (the test's tmp dir, named in the output)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from citypost.config import WebConfig
from cluster.system import CitySystem
from console.web.vendor_sync import VENDOR_DIR
from tests.integration.city_support import small_city

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CITY = "dijon"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
AXE = VENDOR_DIR / "axe-core" / "axe.min.js"
SHOWN_S = 20_000  # ms: how long a live change may take to show (generous, a loaded CI)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CitySystem]:
    run_dir = tmp_path_factory.mktemp("browser")
    with small_city(run_dir, web=WebConfig(enabled=True, port=None)) as system:
        yield system


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


def _url(city: CitySystem) -> str:
    assert city.web is not None
    return city.web.url


async def _log_in(browser: Browser, city: CitySystem, user: str) -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    await page.goto(_url(city))
    await page.get_by_label("User").fill(user)
    await page.get_by_label("Password").fill(city.passwords[user])
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("status").first).to_contain_text("Leading:", timeout=SHOWN_S)
    return page


async def _shot(page: Page, directory: Path, name: str) -> None:
    path = directory / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


async def _violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations (the vendored copy, evaluated by the
    browser's debugging protocol: the page's own policy rightly refuses inline scripts)."""
    await page.evaluate(AXE.read_text())
    result: dict[str, Any] = await page.evaluate("async () => await axe.run(document)")
    return [v for v in result["violations"] if v["impact"] in ("serious", "critical")]


def _raise_room_alarm(city: CitySystem, token: str) -> str:
    """A dangerous command sent as an emergency: it goes at once and raises an alarm for
    the whole room (security.approval) — an alarm every role sees."""
    assert city.city is not None
    group = next(d.group for d in city.city.registry if d.asset_class == 1)
    body = {
        "idempotency_key": str(uuid.uuid4()),
        "command": {
            "asset_class": "STREET_LAMP",
            "target": {"group": group},
            "set_brightness": {"brightness_pct": 0.0},
        },
        "reason": "browser test: an emergency switch-off",
        "emergency": True,
    }
    reply = httpx.post(
        f"{_url(city)}/api/rpc/OperatorService/SendCommand",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["command"]["command_id"])


async def test_two_roles_see_a_live_alarm_and_only_the_one_allowed_acknowledges_it(
    browser: Browser, city: CitySystem, tmp_path: Path
) -> None:
    supervisor = await _log_in(browser, city, "supervisor")
    wallboard = await _log_in(browser, city, "wallboard")
    await _shot(supervisor, tmp_path, "room-supervisor")
    assert not await _violations(supervisor)

    token = await supervisor.evaluate("() => window.__console.token()")
    _raise_room_alarm(city, token)
    # It arrives on both screens through the event stream, without a reload.
    for page in (supervisor, wallboard):
        await expect(page.locator("tbody tr").first).to_be_visible(timeout=SHOWN_S)
    row = wallboard.locator("tbody tr").first
    await expect(row).to_contain_text("ACTIVE_UNACK")

    # The wallboard may read alarms, not handle them: the post refuses, the page says why.
    await wallboard.locator("table").focus()
    await wallboard.keyboard.press("a")
    await expect(wallboard.get_by_text("alarms.handle")).to_be_visible(timeout=SHOWN_S)

    # The supervisor acknowledges from the keyboard; both screens show it.
    await supervisor.locator("table").focus()
    await supervisor.keyboard.press("a")
    for page in (supervisor, wallboard):
        await expect(page.locator("tbody tr").first).to_contain_text("ACTIVE_ACK", timeout=SHOWN_S)
    await _shot(wallboard, tmp_path, "room-wallboard")
    assert not await _violations(wallboard)


async def test_a_leader_killed_during_a_session_is_followed_without_a_reload(
    browser: Browser, city: CitySystem, tmp_path: Path
) -> None:
    page = await _log_in(browser, city, "supervisor")
    before = await page.evaluate("() => [window.__console.leader, window.__console.epoch]")
    await page.evaluate("() => { window.__loaded = performance.timeOrigin; }")
    assert city.crash_post(before[0]) > 1
    banner = page.get_by_role("status").first
    await expect(banner).to_contain_text("FAILOVER", timeout=SHOWN_S)
    await _shot(page, tmp_path, "failover")
    await expect(banner).to_contain_text("Leading:", timeout=60_000)
    after = await page.evaluate("() => [window.__console.leader, window.__console.epoch]")
    assert after[0] != before[0] and after[1] > before[1]
    assert await page.evaluate("() => window.__loaded === performance.timeOrigin")  # no reload
    # A command sent afterwards, with the same session, goes to the new leader.
    token = await page.evaluate("() => window.__console.token()")
    _raise_room_alarm(city, token)
    await expect(page.locator("tbody tr").first).to_be_visible(timeout=SHOWN_S)
    await _shot(page, tmp_path, "after-failover")
