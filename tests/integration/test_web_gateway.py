"""The web console's gateway against a real city (both posts, etcd, the broker, mutual TLS):
the JSON bridge decides nothing itself (the posts refuse, and say what was missing),
the banner's view of the posts, the event stream's ids, resume and resync, and the map's
columns and live states."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from citypost.config import WebConfig
from cluster.system import CitySystem
from tests.integration.city_support import small_city

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CITY = "dijon"


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CitySystem]:
    # The web console as the demo serves it, on a free port.
    with small_city(
        tmp_path_factory.mktemp("web"), web=WebConfig(enabled=True, port=None)
    ) as system:
        yield system


@dataclass(frozen=True)
class Web:
    url: str


@pytest.fixture(scope="module")
def web(city: CitySystem) -> Web:
    assert city.web is not None and city.web.url.startswith("http://127.0.0.1:")
    return Web(city.web.url)


def _rpc(web: Web, method: str, body: dict[str, Any], token: str = "") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{web.url}/api/rpc/{method}", json=body, headers=headers, timeout=30)


def _login(web: Web, city: CitySystem, user: str) -> str:
    reply = _rpc(web, "AuthService/Login", {"user": user, "password": city.passwords[user]})
    assert reply.status_code == 200, reply.text
    token: str = reply.json()["access_token"]
    return token


def _lamp_command(city: CitySystem) -> dict[str, Any]:
    assert city.city is not None
    group = next(d.group for d in city.city.registry if d.asset_class == 1)  # a lamp's group
    return {
        "idempotency_key": str(uuid.uuid4()),
        "command": {
            "asset_class": "STREET_LAMP",
            "target": {"group": group},
            "set_brightness": {"brightness_pct": 42.0},
        },
        "reason": "web gateway test",
    }


def test_the_page_and_its_libraries_are_served_under_a_strict_policy(web: Web) -> None:
    page = httpx.get(f"{web.url}/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    policy = page.headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in policy  # the import map, by its hash
    assert "unsafe" not in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    library = httpx.get(f"{web.url}/vendor/preact/dist/preact.mjs", timeout=10)
    assert library.status_code == 200 and "javascript" in library.headers["content-type"]
    assert httpx.get(f"{web.url}/vendor/../gateway.py", timeout=10).status_code == 404


def test_the_posts_refuse_through_the_bridge_and_say_what_was_missing(
    web: Web, city: CitySystem
) -> None:
    wrong = _rpc(web, "AuthService/Login", {"user": "supervisor", "password": "not-it"})
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "UNAUTHENTICATED"

    anonymous = _rpc(web, "OperatorService/ListAlarms", {})
    assert anonymous.status_code == 401, anonymous.text
    assert "token" in anonymous.json()["message"].lower()

    wallboard = _login(web, city, "wallboard")
    listed = _rpc(web, "OperatorService/ListAlarms", {"view": "ALARM_VIEW_ALL"}, wallboard)
    assert listed.status_code == 200, listed.text
    refused = _rpc(web, "OperatorService/SendCommand", _lamp_command(city), wallboard)
    assert refused.status_code == 403, refused.text
    assert "commands.send" in refused.json()["message"]

    assert _rpc(web, "OperatorService/NoSuchMethod", {}, wallboard).status_code == 404
    assert _rpc(web, "OperatorService/WatchEvents", {}, wallboard).status_code == 404
    bad = httpx.post(
        f"{web.url}/api/rpc/OperatorService/ListAlarms",
        content=b"{not json",
        headers={"Authorization": f"Bearer {wallboard}"},
        timeout=10,
    )
    assert bad.status_code == 400 and "ListAlarmsRequest" in bad.json()["message"]


def test_the_banner_names_the_leader_and_its_epoch(web: Web, city: CitySystem) -> None:
    token = _login(web, city, "supervisor")
    posts = httpx.get(
        f"{web.url}/api/posts", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).json()
    roles = sorted(p["role"] for p in posts["posts"])
    assert roles == ["leader", "standby"]
    assert posts["leader"] in ("primary", "backup") and posts["epoch"] > 0
    leader = next(p for p in posts["posts"] if p["role"] == "leader")
    assert leader["epoch"] == posts["epoch"] and leader["post"] == posts["leader"]


def _events(
    web: Web,
    token: str,
    last: str | None,
    until: Any,
    limit: int = 200,
    path: str = "/api/events",
) -> list[tuple[str | None, str, dict[str, Any]]]:
    """Events of one stream, read until `until(events)` holds."""
    headers = {"Authorization": f"Bearer {token}"}
    if last:
        headers["Last-Event-ID"] = last
    got: list[tuple[str | None, str, dict[str, Any]]] = []
    with httpx.stream("GET", f"{web.url}{path}", headers=headers, timeout=30) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        event_id: str | None = None
        kind = ""
        for line in stream.iter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                got.append((event_id, kind, json.loads(line[6:])))
                event_id, kind = None, ""
                if until(got) or len(got) >= limit:
                    return got
    return got


def _has_command(events: list[Any], command_id: str) -> bool:
    return any(
        k == "command" and e["command"]["command"]["command_id"] == command_id for _, k, e in events
    )


def test_the_event_stream_resumes_after_its_last_id_and_resyncs_a_stranger(
    web: Web, city: CitySystem
) -> None:
    token = _login(web, city, "supervisor")
    sent: list[str] = []

    def send_once_resynced(events: list[Any]) -> bool:
        if not sent and any(k == "resync" for _, k, _ in events):
            reply = _rpc(web, "OperatorService/SendCommand", _lamp_command(city), token)
            assert reply.status_code == 200, reply.text
            sent.append(reply.json()["command"]["command_id"])
        return bool(sent) and _has_command(events, sent[0])

    # A new stream: the banner, a resync (read the state afresh), then what changes.
    opened = _events(web, token, None, send_once_resynced)
    kinds = [k for _, k, _ in opened]
    assert kinds.index("resync") < kinds.index("command")
    epoch = next(e for _, k, e in opened if k == "posts")["epoch"]
    assert epoch > 0
    first_id = next(
        i
        for i, k, e in opened
        if k == "command" and e["command"]["command"]["command_id"] == sent[0]
    )
    assert first_id is not None and first_id.startswith(f"{epoch}:")

    # The browser's connection drops; a command goes meanwhile; the reconnect resumes.
    missed = _rpc(web, "OperatorService/SendCommand", _lamp_command(city), token).json()
    missed_id = missed["command"]["command_id"]
    resumed = _events(web, token, first_id, lambda ev: _has_command(ev, missed_id))
    assert _has_command(resumed, missed_id)
    assert not _has_command(resumed, sent[0])  # nothing before the last id comes again
    assert "resync" not in [k for _, k, _ in resumed]
    revisions = [int(i.split(":")[1]) for i, k, _ in resumed if k == "command" and i]
    assert revisions and min(revisions) > int(first_id.split(":")[1])
    assert revisions == sorted(revisions)

    # An id of another epoch (a stream from before a failover): the page must resync.
    stranger = _events(
        web, token, f"{epoch + 1000}:5", lambda ev: any(k == "resync" for _, k, _ in ev)
    )
    resync = next(e for _, k, e in stranger if k == "resync")
    assert "leader changed" in resync["why"] and resync["epoch"] == epoch


def test_the_map_is_every_asset_once_then_live_states(web: Web, city: CitySystem) -> None:
    assert city.city is not None
    registry = {d.dev_eui: d for d in city.city.registry}
    assert httpx.get(f"{web.url}/api/map", timeout=30).status_code == 401  # no token
    token = _login(web, city, "wallboard")  # reading the map is for every role
    reply = httpx.get(
        f"{web.url}/api/map",
        headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"},
        timeout=30,
    )
    assert reply.status_code == 200 and reply.headers["content-encoding"] == "gzip"
    cols = reply.json()
    assert sorted(cols["eui"]) == cols["eui"] and set(cols["eui"]) == set(registry)
    i = len(cols["eui"]) // 2
    device = registry[cols["eui"][i]]
    assert cols["cls"][i] == device.asset_class
    assert cols["groups"][cols["grp"][i]] == device.group
    assert abs(cols["lat"][i] - device.latitude) < 2e-5

    # A snapshot of every asset, then changes (a running city changes something within
    # seconds: buses move, lamps and spots report).
    events = _events(web, token, None, lambda ev: len(ev) >= 2, limit=2, path="/api/map/events")
    (_, kind, first), (_, _, later) = events
    assert kind == "states" and first["snapshot"] and first["map_id"] == cols["map_id"]
    assert len(first["s"]) == len(cols["eui"])
    assert not later["snapshot"] and later["seq"] > first["seq"]
    assert len(later["i"]) == len(later["s"]) and len(later["v"]) % 4 == 0
    assert later["i"] or later["v"]
