"""The web console at the city's size, in headless Chromium (Debian's, driven by Playwright).

Starts the whole city (both posts, the gateway of the web console) at `--scale` (the
article's 38,702 devices by default), lets it run `--warm-s`, then, as an operator, in a
browser of its own session (see operator_apart):

- opens the page, which draws the map's base (communes, bus lines, gateway sites) while
  the operator types: the click comes once the base is drawn (the time it took from the
  page's opening is reported too);
- logs in and times the first complete map (the click on "Log in" to the first frame
  drawn with the base, the lamp groups and every fixed asset), against the first banner
  (the posts' roles: the page's smallest round trip) measured in the same page load;
  in three browser contexts: the first operator after the console's start (the gateway
  builds the map's JSON then), one who clicks as soon as the form shows (a password
  manager's fill: the base is drawn after the click too; timed from the page's opening
  as well), and the next operator as on any day (the figure checked);
- times 1,000 assets changing state until the frame that draws them is rendered,
  against one asset changing, in the same map (the same code path as a state message
  from the stream);
- counts what the two event streams (/api/events and /api/map/events) bring the page
  over `--steady-s` seconds of a running city: the bandwidth per operator.

Targets (the web console issue): first map <= 3 s, 1,000 changes shown <= 1 s,
<= 50 kB/s per operator in steady state. These are absolute times on a noisy 2-core
machine running the whole city as well; the ratios to the baselines are what compares
across machines.

    python -m bench.web [--scale 1] [--warm-s 60] [--steady-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

from bench.harness import parse_overrides
from citypost.config import Config, load_config
from cluster.processes import popen_bound_to_us
from cluster.system import CitySystem

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TARGET_FIRST_MAP_S = 3.0
TARGET_CHANGES_S = 1.0
TARGET_BYTES_PER_S = 50_000
CHANGES = 1000
OPERATOR_TIMEOUT_S = 600
# The operator's browser's scheduling group (see operator_apart).
BROWSER_NICE = -10
AUTOGROUP = Path("/proc/self/autogroup")
PASSWORD_ENV = "CITYPOST_BENCH_PASSWORD"


def bench_config(args: argparse.Namespace, tmp: str) -> Config:
    overrides: dict[str, Any] = {"city.scale": args.scale, **parse_overrides(args.set)}
    overrides.update({"run_dir": tmp, "web.enabled": True, "web.port": None})
    overrides.setdefault("post.grpc_port", None)
    return load_config(overrides=overrides)


async def open_console(
    browser: Browser, url: str, password: str, typing: bool = True
) -> tuple[Page, dict[str, Any]]:
    """Log in as the supervisor in a new browser context (its own cache) and time the
    first banner and the first complete map from the click on "Log in". `typing`: the
    click comes once the map's base is drawn, as an operator typing would give it time
    to be; else at once (a password manager's fill)."""
    context = await browser.new_context(viewport={"width": 1600, "height": 1000})
    page = await context.new_page()
    map_bytes: list[int] = []

    async def on_response(response: Any) -> None:
        if response.url.endswith("/api/map"):
            map_bytes.append(len(await response.body()))

    page.on("response", on_response)
    await page.goto(url)
    if typing:  # the page draws the map's base while the operator types (seconds)
        await page.wait_for_function("() => window.__console.map && window.__console.map.base")
    await page.get_by_label("User").fill("supervisor")
    await page.get_by_label("Password").fill(password)
    clicked = await page.evaluate("() => performance.now()")
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_function(
        "() => window.__console.map && window.__console.map.ready", timeout=120_000
    )
    times = await page.evaluate(
        "() => [window.__console.firstPostsAt, window.__console.map.readyAt,"
        " window.__console.map.assets, window.__console.map.phases, window.__console.map.frames,"
        " window.__console.map.baseAt]"
    )
    first_map_s = (times[1] - clicked) / 1000
    return page, {
        "assets_on_map": times[2],
        "map_json_bytes": map_bytes[0] if map_bytes else None,
        # From the page's opening (performance.now's origin) to its map's base drawn, and
        # to the first complete map (the time to type, or not, included).
        "base_drawn_s": round(times[5] / 1000, 3),
        "page_to_map_s": round(times[1] / 1000, 3),
        "first_banner_s": round((times[0] - clicked) / 1000, 3),
        "first_map_s": round(first_map_s, 3),
        # Where its time went, from the click: the columns read, the first snapshot of
        # states; and the frames drawn until it was complete.
        "phases_s": {name: round((at - clicked) / 1000, 3) for name, at in times[3].items()},
        "frames": times[4],
    }


async def operate(
    url: str, password: str, steady_s: float, screenshot: Path | None = None
) -> dict[str, Any]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            # The first operator after the console's start (the gateway builds the map's
            # JSON once, then serves it to every operator), then an operator opening the
            # console as on any other day; the changes and bandwidth in the latter's page.
            first, cold = await open_console(browser, url, password)
            await first.context.close()
            hurried, at_once = await open_console(browser, url, password, typing=False)
            await hurried.context.close()
            page, warm = await open_console(browser, url, password)
            one_ms = await page.evaluate("() => window.__console.map.timeChanges(1)")
            many_ms = await page.evaluate(f"() => window.__console.map.timeChanges({CHANGES})")

            if screenshot is not None:  # the README's picture of the room at full scale
                await page.screenshot(path=str(screenshot), type="jpeg", quality=70)
            await page.evaluate("() => { window.__console.bytes = {}; }")
            started = time.monotonic()
            await asyncio.sleep(steady_s)
            counted: dict[str, int] = await page.evaluate("() => window.__console.bytes")
            elapsed = time.monotonic() - started
        finally:
            await browser.close()
    per_stream = {stream: round(n / elapsed) for stream, n in sorted(counted.items())}
    total = sum(counted.values()) / elapsed
    return {
        "assets_on_map": warm["assets_on_map"],
        "map_json_bytes": cold["map_json_bytes"],
        "first_banner_s": warm["first_banner_s"],
        "first_map_s": warm["first_map_s"],
        "first_map_vs_banner": round(warm["first_map_s"] / max(warm["first_banner_s"], 1e-3), 2),
        "first_map_phases_s": warm["phases_s"],
        "first_map_frames": warm["frames"],
        "base_drawn_s": warm["base_drawn_s"],
        "first_operator": {k: cold[k] for k in ("base_drawn_s", "first_banner_s", "first_map_s")},
        # The click as soon as the form shows: the base and the data both after it.
        "click_at_once": {k: at_once[k] for k in ("first_map_s", "page_to_map_s", "frames")},
        "one_change_s": round(one_ms / 1000, 3),
        "changes_1000_s": round(many_ms / 1000, 3),
        "changes_1000_vs_one": round(many_ms / max(one_ms, 1e-3), 2),
        "stream_bytes_per_s": per_stream,
        "bytes_per_s_per_operator": round(total),
    }


def group_priority(nice: int) -> str:
    """Set this session's scheduling group's nice; says what the group runs at."""
    try:
        AUTOGROUP.write_text(f"{nice}\n")
        return AUTOGROUP.read_text().strip()
    except OSError as exc:  # no autogroup in this kernel, or not allowed a negative nice
        return f"unchanged ({exc.strerror or exc})"


def operator_apart(
    url: str, password: str, steady_s: float, screenshot: Path | None, nice: int
) -> dict[str, Any]:
    """`operate` in a process of its own session, as an operator's browser is a program
    apart from the city. With Linux's autogroup scheduling (each session one group, the
    groups sharing the CPU fairly) a browser started by this process would share one
    group with the simulated city's threads and get a fraction of what any other program
    on the machine gets. Its group runs at `nice`: a control room's browser runs on a
    workstation of its own, which this 2-core machine, running the whole city, is not;
    -10 gives it about the CPU such a workstation would (0: the city's priority)."""
    argv = [sys.executable, "-m", "bench.web", "--operator-of", url, "--steady-s", str(steady_s)]
    argv += ["--browser-nice", str(nice)]
    if screenshot is not None:
        argv += ["--screenshot", str(screenshot)]
    proc = popen_bound_to_us(
        argv,
        stdout=subprocess.PIPE,
        env={**os.environ, PASSWORD_ENV: password},
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=OPERATOR_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"the operator's browser failed (exit {proc.returncode})")
    measured: dict[str, Any] = json.loads(out)
    return measured


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        config = bench_config(args, tmp)
        system = CitySystem(config, Path(tmp) / "run")
        try:
            system.start(lambda step: print(f"bench.web: {step}", file=sys.stderr))
            assert system.web is not None and system.city is not None
            print(f"bench.web: the city runs; warming {args.warm_s:.0f} s", file=sys.stderr)
            time.sleep(args.warm_s)
            measured = operator_apart(
                system.web.url,
                system.passwords["supervisor"],
                args.steady_s,
                args.screenshot,
                args.browser_nice,
            )
            devices = len(system.city.registry)
        finally:
            system.stop()
    checks = {
        "every_asset_on_the_map": measured["assets_on_map"] == devices,
        "first_map": measured["first_map_s"] <= TARGET_FIRST_MAP_S,
        "changes_1000": measured["changes_1000_s"] <= TARGET_CHANGES_S,
        "bandwidth": measured["bytes_per_s_per_operator"] <= TARGET_BYTES_PER_S,
    }
    return {
        "bench": "web",
        "scale": args.scale,
        "devices": devices,
        **measured,
        "targets": {
            "first_map_s": TARGET_FIRST_MAP_S,
            "changes_1000_s": TARGET_CHANGES_S,
            "bytes_per_s_per_operator": TARGET_BYTES_PER_S,
        },
        "checks": checks,
        "ok": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--warm-s", type=float, default=60.0, help="the city runs this long first")
    parser.add_argument("--steady-s", type=float, default=60.0, help="bandwidth window")
    parser.add_argument("--screenshot", type=Path, help="save the room once the map is drawn")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument(
        "--browser-nice",
        type=int,
        default=BROWSER_NICE,
        help="the operator's browser's scheduling group's nice (0: the city's priority)",
    )
    # The operator's side alone (see operator_apart), against a running gateway.
    parser.add_argument("--operator-of", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.operator_of:
        group = group_priority(args.browser_nice)  # before the browser starts: it inherits
        password = os.environ[PASSWORD_ENV]
        measured = asyncio.run(operate(args.operator_of, password, args.steady_s, args.screenshot))
        print(json.dumps({**measured, "browser_group": group}))
        return 0
    result = run(args)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
