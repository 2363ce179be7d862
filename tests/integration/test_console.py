"""`citypost console` against a real OperatorService (and PostAdmin) on 127.0.0.1.

The post behind it is the real dispatcher over the in-memory control state
(epoch 3), publishing downlinks to a list. The console runs in-process: each
invocation is `console.cli.run(argv)` in a worker thread (it is a blocking
gRPC client; the server runs on the test's event loop).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest

from actors.catalog import actor_name
from actors.decisions import RaiseAlarm
from api.admin import PostAdminService
from api.operator import operator_service
from api.server import Service, start_server
from bridges.registry import Device, DeviceRegistry, application_id
from bridges.sinks import MemorySink
from citypost.errors import InfrastructureError
from cluster.ports import free_port
from console.cli import run
from console.client import PostClient, RetryPolicy
from failover.control_state import LEDGER, InMemoryControlState
from post.asset_board import AssetBoard
from post.dispatcher import Dispatcher
from post.footprint import Footprint
from post.lag import LagSummary
from post.silence_watch import StreamFigures
from protos.citypost.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    assets_pb2,
    command_pb2,
    control_state_pb2,
    operations_pb2,
    operator_pb2,
    operator_pb2_grpc,
    telemetry_pb2,
)

if TYPE_CHECKING:
    from post.post import Post

pytestmark = pytest.mark.integration

AC = assets_pb2.AssetClass
EPOCH = 3
TALANT = (47.3372, 5.0058)


def _device(n: int, asset_class: int, group: str, commune: str) -> Device:
    return Device(
        dev_eui=f"{asset_class:02x}{n:014x}",
        name=f"{group}-{n}",
        asset_class=asset_class,  # type: ignore[arg-type]
        group=group,
        commune=commune,
        latitude=TALANT[0],
        longitude=TALANT[1],
        transport=assets_pb2.LORAWAN,
        application_id=application_id("dijon", asset_class),  # type: ignore[arg-type]
    )


LAMPS = [_device(n, AC.STREET_LAMP, "talant", "Talant") for n in range(1, 4)]
BOLLARDS = [_device(n, AC.BOLLARD, "old-town", "Dijon") for n in range(1, 3)]
SIGNALS = [_device(n, AC.TRAFFIC_SIGNAL, "signals-dijon", "Dijon") for n in range(1, 3)]


class WallClock:
    def __init__(self) -> None:
        self.now_ms = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class LivePost:
    address: str
    state: InMemoryControlState
    dispatcher: Dispatcher
    sent: list[tuple[str, bytes]]
    sink: MemorySink

    async def console(self, *argv: str) -> int:
        # A stand-in post on a plaintext port (TLS is tested with the city).
        return await asyncio.to_thread(run, ["--insecure", "--post", self.address, *argv])

    async def ledger(self) -> list[control_state_pb2.CommandRecord]:
        page = await self.state.list(LEDGER, control_state_pb2.CommandRecord, limit=1000)
        return [entry.value for entry in page.entries]


def _stand_in_post(registry: DeviceRegistry, dispatcher: Dispatcher) -> Any:
    """What PostAdminService reads of a post, without its Ray cluster."""
    lamps = actor_name(AC.STREET_LAMP, "talant")
    feed = SimpleNamespace(
        down=[lamps],
        restarts={lamps: 2},
        worker_pids={},
        apply_lag=LagSummary(count=47, p50_ms=120, p99_ms=480, max_ms=510),
    )
    edge = SimpleNamespace(
        decoded_by_class={"street_lamp": 40, "bollard": 7},
        dead_letters_by_reason={"bad_lpp": 1},
        longest_gap_s_by_class={"street_lamp": 2.5, "bollard": 30.0},
    )
    return SimpleNamespace(
        name="primary",
        epoch=EPOCH,
        commanding=lambda: True,
        started_at_ms=1_800_000_000_000,
        uplinks_per_s=12.5,
        registry=registry,
        dispatcher=dispatcher,
        feed=SimpleNamespace(stats=lambda: feed),
        edge=SimpleNamespace(stats=lambda: edge),
        health=lambda: SimpleNamespace(healthy=False, reason=f"actors down: {lamps}"),
        footprint=SimpleNamespace(latest=Footprint(processes=14, pss_bytes=2**30, cpu_cores=0.5)),
        clock=SimpleNamespace(speed=60.0),
        silence=SimpleNamespace(figures=lambda _now: StreamFigures(1_800_000_000_000, 59.5, (), 0)),
    )


@pytest.fixture
async def post() -> AsyncIterator[LivePost]:
    registry = DeviceRegistry([*LAMPS, *BOLLARDS, *SIGNALS])
    state = InMemoryControlState(epoch=EPOCH)
    wall = WallClock()
    sent: list[tuple[str, bytes]] = []
    dispatcher = Dispatcher(
        state=state,
        registry=registry,
        publish=lambda d: sent.append((d.topic, d.payload)),
        epoch=lambda: EPOCH,
        wall_ms=wall,
    )
    await dispatcher.load()
    sink = MemorySink()
    admin = PostAdminService(cast("Post", _stand_in_post(registry, dispatcher)))
    services = [
        operator_service(dispatcher, state, registry, sink, AssetBoard(registry), wall_ms=wall),
        Service(
            admin_pb2.DESCRIPTOR.services_by_name["PostAdmin"].full_name,
            admin_pb2_grpc.add_PostAdminServicer_to_server,
            admin,
        ),
    ]
    port = free_port()
    server, _ = await start_server(services, port=port, deadline_s=5.0)
    try:
        yield LivePost(f"127.0.0.1:{port}", state, dispatcher, sent, sink)
    finally:
        await server.stop(grace=None)


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich tables as wide as they need (ids are not folded)."""
    monkeypatch.setenv("COLUMNS", "400")


def _json(out: str) -> Any:
    return json.loads(out)


@pytest.mark.timeout(30)
async def test_send_a_group_command_then_see_it_listed_and_shown(
    post: LivePost, capsys: pytest.CaptureFixture[str], wide: None
) -> None:
    code = await post.console(
        "--operator", "op-claire", "--json",
        "command", "send", "--group", "talant", "--class", "street_lamp",
        "--brightness", "40", "--ttl", "30", "--reason", "festival",
    )  # fmt: skip
    assert code == 0
    record = _json(capsys.readouterr().out)
    command_id = record["command"]["commandId"]
    assert record["status"] == "SENT" and record["issuedBy"] == "op-claire"
    assert record["command"]["setBrightness"]["brightnessPct"] == 40
    assert record["command"]["epoch"] == str(EPOCH)
    assert len(post.sent) == 1  # one multicast for every lamp of the group
    assert [r.command.command_id for r in await post.ledger()] == [command_id]

    assert await post.console("commands", "--json") == 0
    listed = _json(capsys.readouterr().out)
    assert [c["command"]["commandId"] for c in listed] == [command_id]

    assert await post.console("commands", "--status", "sent") == 0
    table = capsys.readouterr().out
    assert command_id in table and "brightness 40%" in table and "0/3" in table

    assert await post.console("command", "show", command_id) == 0
    shown = capsys.readouterr().out
    assert "group talant" in shown and "op-claire" in shown

    assert await post.console("commands", "--status", "acked", "--json") == 0
    assert _json(capsys.readouterr().out) == []


@pytest.mark.timeout(30)
async def test_signals_back_to_normal_and_a_bollard_raised(
    post: LivePost, capsys: pytest.CaptureFixture[str], wide: None
) -> None:
    # "normal" is an empty SetSignalMode: the action must still reach the post as set.
    code = await post.console(
        "--json", "command", "send", "--group", "signals-dijon", "--class", "traffic_signal",
        "--signal-mode", "normal",
    )  # fmt: skip
    assert code == 0
    record = _json(capsys.readouterr().out)
    assert record["command"]["setSignalMode"] == {} and record["expectedAcks"] == len(SIGNALS)
    assert await post.console("command", "show", record["command"]["commandId"]) == 0
    assert "signal normal" in capsys.readouterr().out

    bollard = BOLLARDS[0].dev_eui
    code = await post.console(
        "--json", "command", "send", "--device", bollard, "--bollard", "raise"
    )
    assert code == 0
    record = _json(capsys.readouterr().out)
    assert record["command"]["target"] == {"devEui": bollard}
    assert record["command"]["assetClass"] == "BOLLARD"
    assert record["command"]["setBollardPosition"]["position"] == "RAISED"
    # A lamp takes no bollard command: the post says why, the console exits 1 with it.
    code = await post.console("command", "send", "--device", LAMPS[0].dev_eui, "--bollard", "lower")
    assert code == 1
    assert "INVALID_ARGUMENT: " in capsys.readouterr().err


@pytest.mark.timeout(30)
async def test_set_list_and_end_an_override(
    post: LivePost, capsys: pytest.CaptureFixture[str], wide: None
) -> None:
    code = await post.console(
        "--operator", "op-claire",
        "override", "set", "--class", "street_lamp", "--group", "talant",
        "--brightness", "100", "--minutes", "30", "--reason", "night market", "--json",
    )  # fmt: skip
    assert code == 0
    override = _json(capsys.readouterr().out)
    override_id = override["overrideId"]
    assert override["setBy"] == "op-claire" and override["reason"] == "night market"
    assert int(override["endsAtMs"]) - int(override["startsAtMs"]) == 30 * 60_000

    assert await post.console("overrides", "--active", "--json") == 0
    assert [o["overrideId"] for o in _json(capsys.readouterr().out)] == [override_id]
    assert await post.console("overrides") == 0
    table = capsys.readouterr().out
    assert override_id in table and "street_lamp/talant" in table and "brightness 100%" in table

    # The group is held: a second override is refused with the post's reason.
    code = await post.console(
        "override", "set", "--class", "street_lamp", "--group", "talant",
        "--brightness", "10", "--minutes", "5", "--reason", "again",
    )  # fmt: skip
    assert code == 1
    assert "FAILED_PRECONDITION: " in capsys.readouterr().err

    assert await post.console("override", "end", override_id, "--json") == 0
    ended = _json(capsys.readouterr().out)
    assert ended["overrideId"] == override_id
    assert await post.console("overrides", "--active", "--json") == 0
    assert _json(capsys.readouterr().out) == []


class _AnswerLost(grpc.RpcError):
    """What a client sees when the post acted but its answer never came back."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the connection dropped before the answer"

    def result(self, timeout: float | None = None) -> Any:
        raise self


class _LoseFirstAnswer(grpc.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.keys: list[str] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        if not details.method.endswith("/SendCommand"):
            return outcome
        self.keys.append(request.idempotency_key)
        if len(self.keys) == 1:
            outcome.result()  # the post has acted...
            return _AnswerLost()  # ...and the client never hears of it
        return outcome


@pytest.mark.timeout(30)
async def test_a_retried_write_carries_the_same_key_and_acts_once(post: LivePost) -> None:
    interceptor = _LoseFirstAnswer()

    def channel(address: str) -> grpc.Channel:
        return grpc.intercept_channel(grpc.insecure_channel(address), interceptor)

    request = operator_pb2.SendCommandRequest(
        command=command_pb2.Command(
            asset_class=AC.STREET_LAMP,
            target=command_pb2.Target(group="talant"),
            set_brightness=command_pb2.SetBrightness(brightness_pct=20),
        )
    )

    def send() -> control_state_pb2.CommandRecord:
        retry = RetryPolicy(attempts=3, initial_wait_s=0.01)
        with PostClient([post.address], retry=retry, channel_factory=channel) as client:
            record: control_state_pb2.CommandRecord = client.write("SendCommand", request)
            return record

    record = await asyncio.to_thread(send)
    assert len(interceptor.keys) == 2 and interceptor.keys[0] == interceptor.keys[1] != ""
    ledger = await post.ledger()
    assert [r.command.command_id for r in ledger] == [record.command.command_id]
    assert len(post.sent) == 1  # sent once, not once per try

    # Another invocation is another key: another command.
    request.idempotency_key = ""
    second = await asyncio.to_thread(send)
    assert second.command.command_id != record.command.command_id
    assert len(interceptor.keys) == 3 and interceptor.keys[2] != interceptor.keys[0]


@pytest.mark.timeout(30)
async def test_unreachable_post_exits_2_naming_the_address(
    capsys: pytest.CaptureFixture[str],
) -> None:
    address = f"127.0.0.1:{free_port()}"
    assert await asyncio.to_thread(run, ["--insecure", "--post", address, "assets"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"no post answers at {address}: is `citypost post` running? (UNAVAILABLE)")
    assert len(err.splitlines()) == 1
    # A write is refused the same way, after its retries.
    code = await asyncio.to_thread(run, ["--insecure", "--post", address, "alarm", "ack", "a-1"])
    assert code == 2
    assert f"no post answers at {address}" in capsys.readouterr().err


@pytest.mark.timeout(30)
async def test_reads_go_to_the_first_post_that_answers(
    post: LivePost, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    argv = ["--insecure", "--post", dead, "--post", post.address, "assets", "--json"]
    assert await asyncio.to_thread(run, argv) == 0
    assert len(_json(capsys.readouterr().out)) == len(LAMPS) + len(BOLLARDS) + len(SIGNALS)


class _Struggling(operator_pb2_grpc.OperatorServiceServicer):
    async def ListAssets(self, request: Any, context: Any) -> operator_pb2.ListAssetsResponse:
        raise InfrastructureError("the asset index is reloading; retry in a few seconds")

    async def ListAlarms(self, request: Any, context: Any) -> operator_pb2.ListAlarmsResponse:
        await asyncio.sleep(5)
        return operator_pb2.ListAlarmsResponse()


@pytest.mark.timeout(30)
async def test_a_post_that_answers_unavailable_or_slowly_is_not_called_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name
    servicer = _Struggling()  # type: ignore[abstract]
    service = Service(name, operator_pb2_grpc.add_OperatorServiceServicer_to_server, servicer)
    port = free_port()
    address = f"127.0.0.1:{port}"
    server, _ = await start_server([service], port=port)
    try:
        assert await asyncio.to_thread(run, ["--insecure", "--post", address, "assets"]) == 1
        err = capsys.readouterr().err
        assert "UNAVAILABLE: the asset index is reloading" in err and "no post answers" not in err
        code = await asyncio.to_thread(
            run, ["--insecure", "--post", address, "--timeout", "0.2", "alarms"]
        )
        assert code == 1
        err = capsys.readouterr().err
        assert f"DEADLINE_EXCEEDED: no answer from {address} within 0.2 s" in err
    finally:
        await server.stop(grace=None)


@pytest.mark.timeout(30)
async def test_assets_pages_filters_and_one_asset(
    post: LivePost, capsys: pytest.CaptureFixture[str], wide: None
) -> None:
    lamp = LAMPS[1]
    post.sink.submit(
        [
            telemetry_pb2.Telemetry(
                dev_eui=lamp.dev_eui,
                asset_class=lamp.asset_class,
                group=lamp.group,
                observed_at_ms=1_800_000_000_000,
                lamp=telemetry_pb2.LampReading(brightness_pct=35, power_w=12.5, presence_count=2),
            )
        ]
    )
    assert await post.console("assets", "--class", "street_lamp", "--page-size", "2") == 0
    first_page = capsys.readouterr().out
    assert "2 of 3 assets; --all lists them all" in first_page
    assert await post.console("assets", "--class", "street_lamp", "--page-size", "2", "--all") == 0
    assert "3 assets" in capsys.readouterr().out
    code = await post.console("assets", "--page-size", "1", "--all", "--json")
    assert code == 0
    every = _json(capsys.readouterr().out)
    assert sorted(a["devEui"] for a in every) == sorted(
        d.dev_eui for d in [*LAMPS, *BOLLARDS, *SIGNALS]
    )
    assert await post.console("assets", "--commune", "dijon", "--json") == 0
    assert {a["group"] for a in _json(capsys.readouterr().out)} == {"old-town", "signals-dijon"}

    assert await post.console("asset", lamp.dev_eui) == 0
    shown = capsys.readouterr().out
    assert "35%, 12.5 W, presence 2" in shown and "Talant" in shown
    assert await post.console("asset", "ffffffffffffffff") == 1
    assert capsys.readouterr().err.startswith("citypost console: NOT_FOUND: ")


@pytest.mark.timeout(30)
async def test_alarms_incidents_and_tasks(
    post: LivePost, capsys: pytest.CaptureFixture[str], wide: None
) -> None:
    lamp = LAMPS[0].dev_eui
    await post.dispatcher.apply(
        "policy:street_lamp/talant",
        [RaiseAlarm(lamp, "lamp_fault", operations_pb2.MAJOR, "no light")],
    )
    assert await post.console("alarms", "--state", "active", "--min-severity", "minor") == 0
    table = capsys.readouterr().out
    assert "lamp_fault" in table and "active_unack" in table and "major" in table
    assert await post.console("alarms", "--json") == 0
    (alarm,) = _json(capsys.readouterr().out)
    code = await post.console("--operator", "op-luc", "alarm", "ack", alarm["alarmId"], "--json")
    assert code == 0
    acked = _json(capsys.readouterr().out)
    assert acked["state"] == "ACTIVE_ACK" and acked["acknowledgedBy"] == "op-luc"
    assert await post.console("alarms", "--state", "active_unack", "--json") == 0
    assert _json(capsys.readouterr().out) == []

    code = await post.console(
        "incident", "create", "--kind", "fire", "--lat", str(TALANT[0]), "--lon", str(TALANT[1]),
        "--detail", "smoke from a bin", "--priority", "2", "--json",
    )  # fmt: skip
    assert code == 0
    incident = _json(capsys.readouterr().out)
    assert incident["kind"] == "INCIDENT_FIRE" and incident["source"] == "OPERATOR"
    assert await post.console("incidents", "--open") == 0
    assert incident["incidentId"] in capsys.readouterr().out

    code = await post.console(
        "task", "create", "--department", "roads", "--kind", "repair_lamp",
        "--lat", str(TALANT[0]), "--lon", str(TALANT[1]), "--detail", "replace the driver",
        "--json",
    )  # fmt: skip
    assert code == 0
    task_id = _json(capsys.readouterr().out)["taskId"]
    assert await post.console("task", "assign", task_id, "--to", "team-roads-2", "--json") == 0
    assert _json(capsys.readouterr().out)["status"] == "ASSIGNED"
    assert await post.console("task", "close", task_id, "--comment", "fixed", "--json") == 0
    assert _json(capsys.readouterr().out)["status"] == "DONE"
    assert await post.console("task", "list", "--department", "roads", "--status", "done") == 0
    listed = capsys.readouterr().out
    assert task_id in listed and "team-roads-2" in listed


@pytest.mark.timeout(30)
async def test_watch_prints_one_json_line_per_event(
    post: LivePost, capsys: pytest.CaptureFixture[str]
) -> None:
    watching = asyncio.create_task(
        post.console("watch", "--class", "street_lamp", "--count", "2", "--json")
    )
    command = command_pb2.Command(
        asset_class=AC.STREET_LAMP,
        target=command_pb2.Target(group="talant"),
        set_brightness=command_pb2.SetBrightness(brightness_pct=60),
    )
    # The stream starts at some point after the task does: keep acting until it has seen enough.
    for _ in range(400):
        if watching.done():
            break
        await post.dispatcher.issue_command(command, issued_by="op-claire")
        await asyncio.sleep(0.05)
    assert await asyncio.wait_for(watching, 5) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    events = [json.loads(line) for line in lines]
    assert all(e["command"]["command"]["assetClass"] == "STREET_LAMP" for e in events)


@pytest.mark.timeout(30)
async def test_watch_with_telemetry_reports_the_posts_refusal(
    post: LivePost, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await post.console("watch", "--telemetry") == 1
    assert "UNIMPLEMENTED: include_telemetry" in capsys.readouterr().err


@pytest.mark.timeout(30)
async def test_status_of_the_post(
    post: LivePost, capsys: pytest.CaptureFixture[str], wide: None
) -> None:
    assert await post.console("status") == 0
    shown = capsys.readouterr().out
    assert "UNHEALTHY: actors down: policy:street_lamp/talant" in shown
    assert "3 actors, 1 unhealthy" in shown and "1 unhealthy, 2 restarts" in shown
    assert "bad_lpp" in shown and "street_lamp" in shown
    assert "1.00 GiB PSS, 0.50 cores, 14 processes" in shown
    assert "p50 120 ms, p99 480 ms" in shown
    assert await post.console("status", "--json") == 0
    status = _json(capsys.readouterr().out)
    assert status["post"] == "primary" and status["epoch"] == str(EPOCH)
    assert status["uplinksByClass"] == {"street_lamp": "40", "bollard": "7"}
    assert status["uplinksPerS"] == 12.5
    assert status["memoryPssBytes"] == str(2**30) and status["processes"] == 14
    assert status["applyLagP99Ms"] == "480"
    assert status["longestGapSByClass"] == {"street_lamp": 2.5, "bollard": 30.0}


def _usage_exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        run(argv)
    assert caught.value.code == 2
    return capsys.readouterr().err


@pytest.mark.timeout(30)
def test_bad_input_is_a_usage_error_before_any_call(capsys: pytest.CaptureFixture[str]) -> None:
    unused = f"127.0.0.1:{free_port()}"
    err = _usage_exit(["--post", unused, "assets", "--class", "spaceship"], capsys)
    assert "usage:" in err and "'spaceship' is not one of: street_lamp" in err
    err = _usage_exit(
        ["--post", unused, "command", "send", "--group", "talant", "--brightness", "5"], capsys
    )
    assert "--group needs --class" in err
    err = _usage_exit(["--post", unused, "command", "send", "--device", "x"], capsys)
    assert "one of the arguments --brightness" in err
    err = _usage_exit(["--post", "nowhere", "assets"], capsys)
    assert "give HOST:PORT" in err


@pytest.mark.timeout(30)
async def test_a_dangerous_command_waits_then_a_second_person_approves_or_rejects_it(
    post: LivePost, capsys: pytest.CaptureFixture[str], wide: None
) -> None:
    off = ("command", "send", "--group", "talant", "--class", "street_lamp", "--brightness", "0")
    assert await post.console("--operator", "op-claire", *off) == 0
    shown = capsys.readouterr().out
    assert "waiting for approval" in shown and "switches off all 3 lamps" in shown
    pending = [r for r in await post.ledger() if r.status == command_pb2.PENDING_APPROVAL]
    assert len(pending) == 1
    command_id = pending[0].command.command_id

    # The requester is not a second person; then someone else approves, and it goes out.
    assert await post.console("--operator", "op-claire", "command", "approve", command_id) == 1
    assert "second person" in capsys.readouterr().err
    code = await post.console("--operator", "op-marc", "--json", "command", "approve", command_id)
    assert code == 0
    approved = _json(capsys.readouterr().out)
    assert approved["status"] == "SENT" and approved["approval"]["decidedBy"] == "op-marc"

    assert await post.console("--operator", "op-claire", *off) == 0
    capsys.readouterr()
    second = [r for r in await post.ledger() if r.status == command_pb2.PENDING_APPROVAL]
    assert len(second) == 1
    reject = ("command", "reject", second[0].command.command_id)
    with pytest.raises(SystemExit) as usage:  # --reason is required to reject
        await post.console("--operator", "op-marc", *reject)
    assert usage.value.code == 2
    assert "--reason" in capsys.readouterr().err
    assert await post.console("--operator", "op-marc", *reject, "--reason", "no works tonight") == 0
    assert "rejected by op-marc: no works tonight" in capsys.readouterr().out
