"""The attack catalogue against a whole small city with security on (issue 13):
each attempt is refused with a reason naming what was missing, audited, and
changes nothing; the operators who may act still can.

One CitySystem (TLS etcd and broker, both posts on mutual TLS with the
authorizer) serves every test of the module.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridges.chirpstack import build_downlink, downlink_topic
from bridges.downlink_frame import COMMAND_F_PORT, encode_command
from bridges.downlink_gate import gate_topic, plan_properties
from bridges.mqtt_session import MqttSession
from chaos.operator_load import lamp_command
from citypost.config import (
    ApprovalConfig,
    SecurityConfig,
)
from cluster.system import CitySystem
from console.cli import run
from console.session import Session, SessionFile, login
from protos.citypost.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    assets_pb2,
    auth_pb2,
    auth_pb2_grpc,
    command_pb2,
    control_state_pb2,
    operator_pb2,
    operator_pb2_grpc,
)
from security import identities
from security.audit_chain import verify
from security.command_signing import CommandSigner
from security.grpc_tls import secure_channel_factory
from security.pki import Kind, Principal
from security.pki_store import PkiStore
from security.tokens import TokenIssuer
from tests.integration.city_support import daytime, small_city

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CITY = "dijon"
APPROVAL_WINDOW_S = 10.0


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CitySystem]:
    # A short approval window, so "approved too late" takes seconds, not minutes.
    security = SecurityConfig(approval=ApprovalConfig(window_s=APPROVAL_WINDOW_S))
    # In the day: a lamp profile command would supersede the commands left waiting here.
    with small_city(tmp_path_factory.mktemp("secure"), sim=daytime(9), security=security) as system:
        yield system


def _store(city: CitySystem) -> PkiStore:
    return PkiStore(city.config.pki_dir, CITY)


def _console(city: CitySystem, name: str = identities.CONSOLE) -> Callable[[str], grpc.Channel]:
    store = _store(city)
    return secure_channel_factory(store.ensure(Principal(CITY, Kind.CONSOLE, name)))


def _login(city: CitySystem, user: str) -> Session:
    """A demo account's session, logged in at whichever post answers first."""
    return login(_console(city), city.addresses(), user, city.passwords[user])


def _code(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: Any = caught.value
    return error.code(), error.details() or ""


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _lamp_group(city: CitySystem) -> str:
    assert city.city is not None
    for device in city.city.registry:
        if device.asset_class == assets_pb2.STREET_LAMP:
            return device.group
    raise AssertionError("no lamp in the city")


def _send_lamps(city: CitySystem, group: str) -> operator_pb2.SendCommandRequest:
    return operator_pb2.SendCommandRequest(
        idempotency_key=str(uuid.uuid4()),
        command=command_pb2.Command(
            asset_class=assets_pb2.STREET_LAMP,
            target=command_pb2.Target(group=group),
            set_brightness=command_pb2.SetBrightness(brightness_pct=42.0),
        ),
    )


def _audit(city: CitySystem) -> list[dict[str, Any]]:
    lines = []
    for path in city.run_dir.glob("audit-*.jsonl"):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line]
    return lines


def _issued_by(city: CitySystem, user: str) -> int:
    """How many commands of the ledger `user` issued (the city's policies issue theirs
    meanwhile: a count of the whole ledger would race them)."""
    count, token = 0, ""
    with city.channel(city.addresses()[0]) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        while True:
            request = operator_pb2.ListCommandsRequest(page_size=500, page_token=token)
            reply = stub.ListCommands(request, timeout=10)
            count += sum(1 for r in reply.commands if r.issued_by == user)
            token = reply.next_page_token
            if not token:
                return count


def test_no_certificate_is_refused_at_the_handshake(city: CitySystem) -> None:
    address = city.addresses()[0]
    with grpc.insecure_channel(address) as channel:
        code, _ = _code(
            lambda: admin_pb2_grpc.PostAdminStub(channel).GetStatus(
                admin_pb2.GetStatusRequest(), timeout=5
            )
        )
    assert code == grpc.StatusCode.UNAVAILABLE


def test_a_workstation_without_a_login_reads_nothing_and_is_audited(city: CitySystem) -> None:
    address = city.addresses()[0]
    with _console(city)(address) as channel:
        code, details = _code(
            lambda: operator_pb2_grpc.OperatorServiceStub(channel).ListAlarms(
                operator_pb2.ListAlarmsRequest(), timeout=5
            )
        )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "no operator token" in details
    refused = [
        e
        for e in _audit(city)
        if e.get("action") == "rpc.refused" and e.get("target", "").endswith("/ListAlarms")
    ]
    assert refused and refused[-1]["actor"] == "console.room"


def test_a_bad_password_is_refused_without_saying_which_and_audited(city: CitySystem) -> None:
    posts = city.addresses()
    with pytest.raises(Exception, match="user name or password is wrong"):
        login(_console(city), posts, "supervisor", "not-the-password-at-all")
    with pytest.raises(Exception, match="user name or password is wrong"):
        login(_console(city), posts, "mallory", "not-the-password-at-all")
    reasons = {e.get("detail") for e in _audit(city) if e.get("action") == "auth.login"}
    assert {"bad_password", "unknown_user"} <= reasons


def test_a_role_lacking_the_permission_is_told_which(city: CitySystem) -> None:
    before = _issued_by(city, "help-line")
    session = _login(city, "help-line")
    leader = _leader(city)
    with _console(city)(leader) as channel:
        code, details = _code(
            lambda: operator_pb2_grpc.OperatorServiceStub(channel).SendCommand(
                _send_lamps(city, _lamp_group(city)),
                timeout=10,
                metadata=_bearer(session.access_token),
            )
        )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "commands.send:street_lamp" in details
    assert _issued_by(city, "help-line") == before  # nothing was written


def test_the_operator_whose_post_it_is_commands(city: CitySystem) -> None:
    session = _login(city, "urban-supervision")
    with _console(city)(_leader(city)) as channel:
        record = operator_pb2_grpc.OperatorServiceStub(channel).SendCommand(
            _send_lamps(city, _lamp_group(city)),
            timeout=10,
            metadata=_bearer(session.access_token),
        )
    assert record.command.issued_by == "urban-supervision"  # the token's, not a header's


def test_expired_foreign_and_stolen_tokens(city: CitySystem, tmp_path: Path) -> None:
    store = _store(city)
    address = city.addresses()[0]
    post = store.identity(Principal(CITY, Kind.POST, "primary")).read()
    expired = TokenIssuer(post, CITY, lifetime_s=60).issue(
        subject="supervisor",
        roles=["supervisor"],
        session_id="s-old",
        amr=["pwd"],
        now=time.time() - 3600,
    )
    other = PkiStore(tmp_path / "lyon", "lyon")
    other.init()
    foreign_post = other.issue(Principal("lyon", Kind.POST, "primary")).read()
    foreign = TokenIssuer(foreign_post, "lyon").issue(
        subject="supervisor", roles=["supervisor"], session_id="s-x", amr=["pwd"], now=time.time()
    )
    # Logged in at one workstation, replayed from another.
    session = _login(city, "supervisor")
    cases = {
        expired: "token expired at",
        foreign: "chain",
        session.access_token: "bound to another workstation",
    }
    for token, reason in cases.items():
        with _console(city, "thief")(address) as channel:
            code, details = _code(
                lambda token=token, channel=channel: admin_pb2_grpc.PostAdminStub(
                    channel
                ).GetStatus(admin_pb2.GetStatusRequest(), timeout=5, metadata=_bearer(token))
            )
        assert code == grpc.StatusCode.UNAUTHENTICATED, reason
        assert reason in details


def test_a_revoked_workstation_is_refused(city: CitySystem) -> None:
    store = _store(city)
    principal = Principal(CITY, Kind.CONSOLE, "lost-laptop")
    store.issue(principal)
    factory = _console(city, "lost-laptop")
    session = login(factory, city.addresses(), "wallboard", city.passwords["wallboard"])
    store.revoke(principal)
    with factory(city.addresses()[0]) as channel:
        code, details = _code(
            lambda: admin_pb2_grpc.PostAdminStub(channel).GetStatus(
                admin_pb2.GetStatusRequest(), timeout=5, metadata=_bearer(session.access_token)
            )
        )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in details


def test_a_token_from_one_post_holds_at_the_other(city: CitySystem) -> None:
    primary, backup = city.addresses()
    with _console(city)(primary) as channel:
        reply = auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(user="auditor", password=city.passwords["auditor"]), timeout=10
        )
    with _console(city)(backup) as channel:
        who = auth_pb2_grpc.AuthServiceStub(channel).WhoAmI(
            auth_pb2.WhoAmIRequest(), timeout=5, metadata=_bearer(reply.access_token)
        )
    assert who.caller == "auditor" and list(who.roles) == ["auditor"]
    assert "audit.read" in who.permissions and "commands.send:street_lamp" not in who.permissions


def test_the_console_logs_in_and_acts(
    city: CitySystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = tmp_path / "session.json"
    flags = ["--pki-dir", str(city.config.pki_dir), "--session", str(session)]
    posts = ["--post", ",".join(city.addresses())]
    monkeypatch.setattr("getpass.getpass", lambda _prompt: city.passwords["supervisor"])
    assert run([*posts, *flags, "login", "--user", "supervisor"]) == 0
    assert SessionFile(session).load() is not None
    assert run([*posts, *flags, "whoami", "--json"]) == 0
    assert run([*posts, *flags, "alarms"]) == 0
    assert run([*posts, *flags, "logout"]) == 0
    assert run([*posts, *flags, "alarms"]) == 1  # refused: nobody logged in


def test_the_auditor_lists_the_audit_and_the_wallboard_may_not(
    city: CitySystem,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    primary, backup = city.addresses()
    with _console(city)(primary) as channel:  # a refusal to find: no login
        _code(
            lambda: operator_pb2_grpc.OperatorServiceStub(channel).ListTasks(
                operator_pb2.ListTasksRequest(), timeout=5
            )
        )
    auditor = _login(city, "auditor")
    request = admin_pb2.ListAuditRequest(
        action_prefix="rpc.refused", target_prefix="/citypost.v1.OperatorService/ListTasks"
    )
    answers = {}
    for address in (primary, backup):  # both posts answer, each from its own file
        with _console(city)(address) as channel:
            answers[address] = admin_pb2_grpc.PostAdminStub(channel).ListAudit(
                request, timeout=10, metadata=_bearer(auditor.access_token)
            )
    refused = answers[primary].entries
    assert refused and refused[0].actor == "console.room"
    assert refused[0].outcome == control_state_pb2.AUDIT_REFUSED
    assert answers[primary].post != answers[backup].post
    wallboard = _login(city, "wallboard")
    with _console(city)(primary) as channel:
        code, details = _code(
            lambda: admin_pb2_grpc.PostAdminStub(channel).ListAudit(
                request, timeout=10, metadata=_bearer(wallboard.access_token)
            )
        )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "audit.read" in details
    # The console, as the auditor.
    session = tmp_path / "session.json"
    flags = ["--pki-dir", str(city.config.pki_dir), "--session", str(session)]
    monkeypatch.setattr("getpass.getpass", lambda _prompt: city.passwords["auditor"])
    assert run(["--post", primary, *flags, "login", "--user", "auditor"]) == 0
    capsys.readouterr()
    assert run(["--post", primary, *flags, "audit", "--action", "rpc.", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert any(e.get("target", "").endswith("/ListTasks") for e in listed)
    # Each post's file is one intact chain, its signers checked against the city's trust.
    trust = _store(city).trust.read_bytes()
    files = sorted(city.run_dir.glob("audit-*.jsonl"))
    assert len(files) == 2
    for path in files:
        with path.open() as lines:
            report = verify(lines, trust)
        assert report.intact, f"{path.name}: {report.first_break}"
        assert report.records > 0


def _leader(city: CitySystem) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for address in city.addresses():
            with city.channel(address) as channel:
                try:
                    status = admin_pb2_grpc.PostAdminStub(channel).GetFailoverStatus(
                        admin_pb2.GetFailoverStatusRequest(), timeout=5
                    )
                except grpc.RpcError:
                    continue
                if status.role == admin_pb2.POST_ROLE_LEADER:
                    return address
        time.sleep(0.2)
    raise AssertionError("no post leads")


def test_the_gate_forwards_only_commands_a_post_signed(city: CitySystem) -> None:
    """Forged commands with a valid topic reach the gate's inbox (a post's broker
    identity publishes them): unsigned, signed by a workstation, or signed by a post
    and altered after. The gate drops each and counts it; no device executes them."""
    assert city.city is not None and city.gate is not None and city.network_server is not None
    store = _store(city)
    lamp = next(d for d in city.city.registry if d.asset_class == assets_pb2.STREET_LAMP)
    forged_ids = []
    payloads = []
    for i in range(3):
        command_id = str(uuid.uuid4())
        forged_ids.append(command_id)
        frame = encode_command(
            command_pb2.Command(
                command_id=command_id,
                epoch=10**15,  # the attack of the issue: an epoch far above the leader's
                asset_class=assets_pb2.STREET_LAMP,
                target=command_pb2.Target(dev_eui=lamp.dev_eui),
                set_brightness=command_pb2.SetBrightness(brightness_pct=float(i)),
            )
        )
        payloads.append(build_downlink(lamp.dev_eui, COMMAND_F_PORT, frame, id=command_id))
    topic = gate_topic(CITY, downlink_topic(lamp.application_id, lamp.dev_eui))
    post = store.identity(Principal(CITY, Kind.POST, "primary"))
    thief = CommandSigner.__new__(CommandSigner)  # a workstation's key posing as a signer
    room = store.identity(Principal(CITY, Kind.CONSOLE, identities.CONSOLE)).read()
    thief._key = serialization.load_pem_private_key(room.key, password=None)  # type: ignore[assignment]
    thief.x5c = base64.b64encode(
        x509.load_pem_x509_certificate(room.cert).public_bytes(serialization.Encoding.DER)
    ).decode()
    signed = plan_properties(
        1, 0, signer=CommandSigner(post.read()), topic=topic, payload=payloads[2]
    )
    before = city.gate.gate.unsigned_dropped
    highest = city.gate.gate.stats().highest_epoch
    session = MqttSession(
        client_id=f"forger-{uuid.uuid4().hex[:8]}",
        host=city.config.mqtt.host,
        port=city.config.mqtt.port or 0,
        tls=post,
    )
    session.start()
    try:
        session.client.publish(topic, payloads[0], qos=1).wait_for_publish(5)
        session.client.publish(
            topic,
            payloads[1],
            qos=1,
            properties=plan_properties(1, 0, signer=thief, topic=topic, payload=payloads[1]),
        ).wait_for_publish(5)
        altered = payloads[2].replace(b'"confirmed":true', b'"confirmed":false')
        session.client.publish(topic, altered, qos=1, properties=signed).wait_for_publish(5)
    finally:
        session.stop(end_session=True)
    deadline = time.monotonic() + 20
    while city.gate.gate.unsigned_dropped < before + 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert city.gate.gate.unsigned_dropped == before + 3
    assert city.gate.gate.stats().highest_epoch == highest  # the fence was not moved
    time.sleep(2)
    executed = {e.command_id for e in city.network_server.executions()}
    assert not executed & set(forged_ids)


def test_a_login_without_a_password_says_so(
    city: CitySystem,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_input(_prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr("getpass.getpass", no_input)
    flags = ["--pki-dir", str(city.config.pki_dir), "--session", str(tmp_path / "s.json")]
    assert run(["--post", ",".join(city.addresses()), *flags, "login", "--user", "auditor"]) == 2
    assert "no password given" in capsys.readouterr().err


def test_ending_an_override_needs_its_class(city: CitySystem) -> None:
    """EndOverride names only the override: the post checks the override's own class."""
    lamps = _login(city, "urban-supervision")
    signals = _login(city, "traffic-control")
    group = _lamp_group(city)
    with _console(city)(_leader(city)) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        override = stub.SetOverride(
            operator_pb2.SetOverrideRequest(
                idempotency_key=str(uuid.uuid4()),
                asset_class=assets_pb2.STREET_LAMP,
                group=group,
                action=lamp_command(group, 60.0),
                duration_ms=600_000,
                reason="security test",
            ),
            timeout=10,
            metadata=_bearer(lamps.access_token),
        )

        def end(token: str) -> Any:
            return stub.EndOverride(
                operator_pb2.EndOverrideRequest(
                    idempotency_key=str(uuid.uuid4()), override_id=override.override_id
                ),
                timeout=10,
                metadata=_bearer(token),
            )

        code, details = _code(lambda: end(signals.access_token))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "overrides.set:street_lamp" in details
        ended = end(lamps.access_token)
    assert ended.override_id == override.override_id


def _lamps_off(city: CitySystem, *, emergency: bool = False) -> operator_pb2.SendCommandRequest:
    request = _send_lamps(city, _lamp_group(city))
    request.command.set_brightness.brightness_pct = 0.0
    request.emergency = emergency
    request.reason = "security test" if emergency else ""
    return request


def _decide(stub: Any, rpc: str, command_id: str, token: str, reason: str = "") -> Any:
    request = operator_pb2.DecideCommandRequest(
        idempotency_key=str(uuid.uuid4()), command_id=command_id, reason=reason
    )
    return getattr(stub, rpc)(request, timeout=10, metadata=_bearer(token))


def test_a_dangerous_command_waits_for_a_second_person(city: CitySystem) -> None:
    lamps = _login(city, "urban-supervision")
    signals = _login(city, "traffic-control")
    boss = _login(city, "supervisor")
    with _console(city)(_leader(city)) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        pending = stub.SendCommand(
            _lamps_off(city), timeout=10, metadata=_bearer(lamps.access_token)
        )
        command_id = pending.command.command_id
        assert pending.status == command_pb2.PENDING_APPROVAL
        assert "switches off" in pending.approval.danger and pending.attempts == 0
        # The requester cannot be their own second person; another post's operator lacks
        # commands.approve; neither changes the record.
        code, details = _code(
            lambda: _decide(stub, "ApproveCommand", command_id, lamps.access_token)
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "second person" in details
        code, details = _code(
            lambda: _decide(stub, "ApproveCommand", command_id, signals.access_token)
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED and "commands.approve" in details
        still = stub.GetCommand(
            operator_pb2.GetCommandRequest(command_id=command_id),
            timeout=10,
            metadata=_bearer(boss.access_token),
        )
        assert still.status == command_pb2.PENDING_APPROVAL and still.attempts == 0
        approved = _decide(stub, "ApproveCommand", command_id, boss.access_token, "planned works")
    assert approved.status == command_pb2.SENT and approved.attempts == 1
    assert approved.approval.decided_by == "supervisor"
    _await_audit(city, ("urban-supervision", "command.approval_ask"))
    _await_audit(city, ("supervisor", "command.approve"))


def test_approval_too_late_is_refused_and_the_command_expires_unsent(city: CitySystem) -> None:
    lamps = _login(city, "urban-supervision")
    boss = _login(city, "supervisor")
    with _console(city)(_leader(city)) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        pending = stub.SendCommand(
            _lamps_off(city), timeout=10, metadata=_bearer(lamps.access_token)
        )
        command_id = pending.command.command_id
        time.sleep(APPROVAL_WINDOW_S + 0.5)
        code, details = _code(
            lambda: _decide(stub, "ApproveCommand", command_id, boss.access_token)
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "too late" in details or "EXPIRED" in details
        deadline = time.monotonic() + 30
        while True:
            record = stub.GetCommand(
                operator_pb2.GetCommandRequest(command_id=command_id),
                timeout=10,
                metadata=_bearer(boss.access_token),
            )
            if record.status != command_pb2.PENDING_APPROVAL or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert record.status == command_pb2.EXPIRED and record.attempts == 0


def test_an_emergency_skips_the_wait_and_alerts_the_room(city: CitySystem) -> None:
    lamps = _login(city, "urban-supervision")
    with _console(city)(_leader(city)) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        sent = stub.SendCommand(
            _lamps_off(city, emergency=True), timeout=10, metadata=_bearer(lamps.access_token)
        )
        assert sent.status == command_pb2.SENT and sent.approval.emergency
        alarms = stub.ListAlarms(
            operator_pb2.ListAlarmsRequest(page_size=500),
            timeout=10,
            metadata=_bearer(lamps.access_token),
        ).alarms
    raised = [a for a in alarms if a.originator == f"command/{sent.command.command_id}"]
    assert len(raised) == 1 and raised[0].type == "emergency_command"
    # Alarms are handled by the roles of their class: not traffic control's to acknowledge.
    signals = _login(city, "traffic-control")
    with _console(city)(_leader(city)) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)

        def acknowledge(token: str) -> Any:
            request = operator_pb2.AlarmActionRequest(
                idempotency_key=str(uuid.uuid4()), alarm_id=raised[0].alarm_id
            )
            return stub.AcknowledgeAlarm(request, timeout=10, metadata=_bearer(token))

        code, details = _code(lambda: acknowledge(signals.access_token))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "alarms.handle:street_lamp" in details
        assert acknowledge(lamps.access_token).acknowledged_by == "urban-supervision"
    _await_audit(city, ("urban-supervision", "command.emergency"))


def _await_audit(city: CitySystem, actor_action: tuple[str, str]) -> None:
    """The posts' audit files follow the control state: an entry lands within moments."""
    deadline = time.monotonic() + 15
    while actor_action not in {(r.get("actor"), r.get("action")) for r in _audit(city)}:
        assert time.monotonic() < deadline, f"no {actor_action} in the audit"
        time.sleep(0.2)


def test_a_command_to_one_device_is_checked_against_the_devices_class(city: CitySystem) -> None:
    """The request may name only the device: the post checks the device's own class."""
    assert city.city is not None
    lamp = next(d for d in city.city.registry if d.asset_class == assets_pb2.STREET_LAMP)
    lamps = _login(city, "urban-supervision")
    signals = _login(city, "traffic-control")

    def send(token: str) -> Any:
        request = operator_pb2.SendCommandRequest(
            idempotency_key=str(uuid.uuid4()),
            command=command_pb2.Command(
                target=command_pb2.Target(dev_eui=lamp.dev_eui),
                set_brightness=command_pb2.SetBrightness(brightness_pct=70.0),
            ),
        )
        with _console(city)(_leader(city)) as channel:
            stub = operator_pb2_grpc.OperatorServiceStub(channel)
            return stub.SendCommand(request, timeout=10, metadata=_bearer(token))

    before = _issued_by(city, "traffic-control")
    code, details = _code(lambda: send(signals.access_token))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "commands.send:street_lamp" in details
    assert _issued_by(city, "traffic-control") == before
    assert send(lamps.access_token).command.asset_class == assets_pb2.STREET_LAMP
