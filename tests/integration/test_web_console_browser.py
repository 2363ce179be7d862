"""The web console in a real browser (Debian's Chromium driven by Playwright) against a real
city: two roles log in, an alarm raised by the room arrives live and is acknowledged from
the keyboard (and refused to a role that may not) and is marked on the map at the lamps it
concerns, the map draws every asset and shows a lamp group lit by an override, the map's
marks place each kind of alarm (device, gateway, zone) and ring a lamp group, a dangerous group command sent from the dialog is approved
by the supervisor in a second browser context and converges, the page has no serious accessibility violation, and when
the leading post is killed the banner shows the failover, then the new leader, with no
reload and no new login. Screenshots of each page are kept as test
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
from tests.integration.city_support import daytime, small_city

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CITY = "dijon"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
AXE = VENDOR_DIR / "axe-core" / "axe.min.js"
SHOWN_S = 20_000  # ms: how long a live change may take to show (generous, a loaded CI)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CitySystem]:
    run_dir = tmp_path_factory.mktemp("browser")
    # Noon in Dijon, whatever the hour of the run: the lamps are off until a test lights some.
    with small_city(run_dir, sim=daytime(11), web=WebConfig(enabled=True, port=None)) as system:
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


def _alarms(page: Page) -> Any:
    """The alarm list's table (the page has other tables: approvals, tasks, posts)."""
    return page.get_by_role("table", name="Alarms, most severe first")


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
    # The login page first: the same accessibility bar as the room.
    login = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
    await login.goto(_url(city))
    await expect(login.get_by_role("button", name="Log in")).to_be_visible()
    # The map's base is drawn behind the login, with no asset until a session brings them.
    await login.wait_for_function("() => window.__console.map.base", timeout=SHOWN_S)
    assert await login.evaluate("() => window.__console.map.points()") == 0
    await _shot(login, tmp_path, "login")
    assert not await _violations(login)

    supervisor = await _log_in(browser, city, "supervisor")
    wallboard = await _log_in(browser, city, "wallboard")
    await _shot(supervisor, tmp_path, "room-supervisor")
    assert not await _violations(supervisor)

    token = await supervisor.evaluate("() => window.__console.token()")
    command_id = _raise_room_alarm(city, token)
    # It arrives on both screens through the event stream, without a reload.
    for page in (supervisor, wallboard):
        await expect(_alarms(page).locator("tbody tr").first).to_be_visible(timeout=SHOWN_S)
    # The map marks it (critical: a triangle) at the middle of the lamps it switched off.
    assert city.city is not None
    lamps = [d for d in city.city.registry if d.asset_class == 1]
    members = [d for d in lamps if d.group == lamps[0].group]
    mark = await supervisor.wait_for_function(
        "originator => window.__console.map.markOf && window.__console.map.markOf(originator)",
        arg=f"command/{command_id}",
        timeout=SHOWN_S,
    )
    placed = await mark.json_value()
    assert placed["mark"] == "critical"
    assert placed["at"][0] == pytest.approx(
        sum(d.longitude for d in members) / len(members), abs=1e-4
    )
    assert placed["at"][1] == pytest.approx(
        sum(d.latitude for d in members) / len(members), abs=1e-4
    )
    row = _alarms(wallboard).locator("tbody tr").first
    await expect(row).to_contain_text("ACTIVE_UNACK")

    # The wallboard may read alarms, not handle them: the post refuses, the page says why.
    await _alarms(wallboard).focus()
    await wallboard.keyboard.press("a")
    await expect(wallboard.get_by_text("alarms.handle")).to_be_visible(timeout=SHOWN_S)

    # The supervisor acknowledges from the keyboard; both screens show it.
    await _alarms(supervisor).focus()
    await supervisor.keyboard.press("a")
    for page in (supervisor, wallboard):
        await expect(_alarms(page).locator("tbody tr").first).to_contain_text(
            "ACTIVE_ACK", timeout=SHOWN_S
        )
    await _shot(wallboard, tmp_path, "room-wallboard")
    assert not await _violations(wallboard)

    # A logout takes the city off the screen: the alarms and assets go, the login returns
    # beside the same map (its base only).
    assert await wallboard.evaluate("() => window.__console.map.points()") > 0
    await wallboard.get_by_role("button", name="Log out").click()
    await expect(wallboard.get_by_role("button", name="Log in")).to_be_visible(timeout=SHOWN_S)
    await expect(_alarms(wallboard)).to_have_count(0)
    assert await wallboard.evaluate(
        "() => [window.__console.map.points(), window.__console.map.ready, window.__console.map.base]"
    ) == [0, False, True]


async def test_the_map_draws_every_asset_and_shows_a_lamp_group_lit_by_an_override(
    browser: Browser, city: CitySystem, tmp_path: Path
) -> None:
    assert city.city is not None
    registry = list(city.city.registry)
    page = await _log_in(browser, city, "supervisor")
    await page.wait_for_function(
        "() => window.__console.map && window.__console.map.ready", timeout=60_000
    )
    shown = await page.evaluate("() => window.__console.map.assets")
    assert shown == len(registry)
    # Vehicles move on the map: their positions arrive with the stream.
    await page.wait_for_function("() => window.__console.map.vehicles > 0", timeout=SHOWN_S)

    # A click on an asset (the one farthest from any other, lamps being drawn by group at
    # this zoom) opens its details.
    fixed = [d for d in registry if d.asset_class not in (1, 9, 10)]
    alone = max(
        fixed,
        key=lambda d: min(
            (d.latitude - o.latitude) ** 2 + (d.longitude - o.longitude) ** 2
            for o in fixed
            if o is not d
        ),
    )
    at = await page.evaluate("eui => window.__console.map.screenOf(eui)", alone.dev_eui)
    await page.mouse.click(at["x"], at["y"])
    await expect(page.locator("aside.asset")).to_contain_text(alone.dev_eui, timeout=SHOWN_S)

    lamps = [d for d in registry if d.asset_class == 1]
    # Not the group the other tests switch off as an emergency (the first one): an
    # override holds its group against other commands.
    group = lamps[-1].group
    assert group != lamps[0].group
    members = [d.dev_eui for d in lamps if d.group == group]
    # Every lamp of the group has been heard at rest (it is day) before the override.
    await page.wait_for_function(
        "euis => euis.every(e => window.__console.map.stateOf(e) === 1)",
        arg=members,
        timeout=60_000,
    )
    token = await page.evaluate("() => window.__console.token()")
    body = {
        "idempotency_key": str(uuid.uuid4()),
        "asset_class": "STREET_LAMP",
        "group": group,
        "action": {
            "asset_class": "STREET_LAMP",
            "target": {"group": group},
            "set_brightness": {"brightness_pct": 60.0},
        },
        "duration_ms": 600_000,
        "reason": "browser test: light a group by day",
    }
    reply = httpx.post(
        f"{_url(city)}/api/rpc/OperatorService/SetOverride",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    # The lamps report themselves lit: the map shows them working (display state 2).
    await page.wait_for_function(
        "euis => euis.every(e => window.__console.map.stateOf(e) === 2)",
        arg=members,
        timeout=90_000,
    )
    await _shot(page, tmp_path, "map")
    assert not await _violations(page)


async def test_the_maps_marks_place_each_alarm_and_ring_a_lamp_group(
    browser: Browser, city: CitySystem
) -> None:
    """The map's marks (console/web/static/marks.js), pure logic run in the browser on rows
    made up for it: a device's alarm at the device, a gateway's at its site, a zone's at
    the middle of its group; the worst of a device's alarms wins; a cleared or suppressed
    alarm marks nothing; a fault or "look at" state marks a device with no alarm; a lamp
    group carries its worst lamp's mark; an alarm with no place is left off the map."""
    page = await (await browser.new_context()).new_page()
    await page.goto(_url(city))
    result = await page.evaluate(
        """async () => {
        const { abnormalMarks, placer } = await import("/static/marks.js");
        const cols = { eui: ["a1", "l1", "l2", "b1"], cls: [3, 1, 1, 9], grp: [0, 1, 1, 2],
          lat: [47.30, 47.32, 47.34, 47.31], lon: [5.00, 5.02, 5.04, 5.01],
          groups: ["signals-x", "lamps-y", "buses"] };
        const places = placer(cols, new Map([["gw1", [5.05, 47.35]]]));
        const alarms = [
          { originator: "l1", severity: "MINOR", state: "ACTIVE_UNACK", group: "lamps-y" },
          { originator: "l1", severity: "MAJOR", state: "ACTIVE_ACK", group: "lamps-y" },
          { originator: "gateway/gw1", severity: "MAJOR", state: "ACTIVE_UNACK" },
          { originator: "air_quality/lamps-y", group: "lamps-y", severity: "MINOR", state: "ACTIVE_UNACK" },
          { originator: "a1", severity: "CRITICAL", state: "CLEARED_UNACK" },
          { originator: "b1", severity: "CRITICAL", state: "ACTIVE_UNACK", suppressed_by: "x" },
          { originator: "command/7", group: "no-such-group", severity: "MAJOR", state: "ACTIVE_UNACK" },
        ];
        const positions = new Map([[3, [47.315, 5.015, 90]]]);
        const states = new Uint8Array([5, 2, 4, 3]);
        const { features, lampGroups } = abnormalMarks({ cols, states, alarms, positions, places });
        return {
          marks: Object.fromEntries(features.map((f) =>
            [f.properties.originator, [f.properties.mark, f.geometry.coordinates]])),
          lampGroups: Object.fromEntries(lampGroups),
          gatewayAt: places.placeOf("gateway/gw1", positions),
          busAt: places.placeOf("b1", positions),
        };
      }"""
    )
    marks = result["marks"]
    assert set(marks) == {"a1", "l1", "l2", "gateway/gw1", "air_quality/lamps-y"}
    assert marks["a1"] == ["fault", [5.00, 47.30]]  # its alarm cleared; its state a fault
    assert marks["l1"] == ["major", [5.02, 47.32]]
    assert marks["l2"] == ["attention", [5.04, 47.34]]
    assert marks["gateway/gw1"] == ["major", [5.05, 47.35]]
    zone, (lon, lat) = marks["air_quality/lamps-y"]
    assert zone == "minor" and (lon, lat) == (pytest.approx(5.03), pytest.approx(47.33))
    assert result["lampGroups"] == {"1": "major"}
    assert result["busAt"] == [5.015, 47.315]  # a vehicle where it was last seen


async def test_a_dangerous_group_command_from_the_dialog_is_approved_and_converges(
    browser: Browser, city: CitySystem, tmp_path: Path
) -> None:
    assert city.city is not None
    lamps = [d for d in city.city.registry if d.asset_class == 1]
    groups = sorted({d.group for d in lamps})
    # Neither the group the room alarm switches off (the first lamp's) nor the one the
    # map test overrides (the last lamp's).
    group = next(g for g in groups if g not in (lamps[0].group, lamps[-1].group))
    members = sum(1 for d in lamps if d.group == group)
    operator = await _log_in(browser, city, "urban-supervision")
    supervisor = await _log_in(browser, city, "supervisor")
    await operator.wait_for_function(
        "() => window.__console.map && window.__console.map.ready", timeout=60_000
    )

    dialog = operator.get_by_role("region", name="Send a command")
    await dialog.get_by_label("Assets").select_option("STREET_LAMP")
    await dialog.get_by_label("Group").select_option(group)
    await dialog.get_by_label("Brightness (%)").fill("0")
    await dialog.get_by_label("Reason").fill("browser test: a group off, two people")
    await dialog.get_by_role("button", name="Review…").click()
    # The dialog resolves the target before anything is sent.
    review = operator.get_by_role("dialog", name="Confirm the command")
    await expect(review).to_contain_text(
        f"set brightness to 0 %: {members} street lamps of group {group}"
    )
    await review.get_by_role("button", name="Send").click()
    status = dialog.locator(".command-status")
    await expect(status).to_contain_text("PENDING_APPROVAL", timeout=SHOWN_S)

    # The supervisor sees it in the approvals panel, in another browser context, and
    # approves it; the operator's dialog follows it to the end.
    approvals = supervisor.get_by_role("region", name="Approvals")
    row = approvals.get_by_role("row").filter(has_text=group)
    await expect(row).to_be_visible(timeout=SHOWN_S)
    await _shot(supervisor, tmp_path, "approvals")
    assert not await _violations(supervisor)
    await row.get_by_role("button", name="Approve").click()
    await expect(status).to_contain_text("ACKED", timeout=90_000)
    await expect(status).to_contain_text(f"{members} of {members} confirmed")
    await _shot(operator, tmp_path, "command-converged")


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
    await expect(_alarms(page).locator("tbody tr").first).to_be_visible(timeout=SHOWN_S)
    await _shot(page, tmp_path, "after-failover")
