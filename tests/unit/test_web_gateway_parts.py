"""The web gateway's pure parts: the bridge's method table, bearer tokens, status codes and
the page's Content-Security-Policy."""

from __future__ import annotations

import base64
import hashlib

import grpc
import pytest

from console.web.gateway import (
    STATIC_DIR,
    bearer_of,
    bridged_methods,
    content_security_policy,
    sse,
    streamed,
)
from console.web.http_errors import http_status
from protos.citypost.v1 import command_pb2, control_state_pb2, operations_pb2, operator_pb2

pytestmark = pytest.mark.unit


def test_the_bridge_serves_the_unary_methods_of_the_three_services_only() -> None:
    methods = bridged_methods()
    assert {
        "AuthService/Login",
        "OperatorService/ListAlarms",
        "PostAdmin/GetFailoverStatus",
    } <= set(methods)
    assert "OperatorService/WatchEvents" not in methods  # a stream: /api/events
    assert methods["OperatorService/ShelveAlarm"].request_type.DESCRIPTOR.name == (
        "ShelveAlarmRequest"
    )
    assert all(
        name.split("/")[0] in {"AuthService", "OperatorService", "PostAdmin"} for name in methods
    )


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def", "abc.def"),
        ("bearer  abc ", "abc"),
        ("Basic dXNlcg==", ""),
        ("", ""),
        (None, ""),
        ("Bearer", ""),
    ],
)
def test_a_bearer_token_is_taken_only_from_a_bearer_header(header: str | None, token: str) -> None:
    assert bearer_of(header) == token


def test_the_posts_refusals_keep_their_meaning_in_http() -> None:
    assert http_status(grpc.StatusCode.UNAUTHENTICATED) == 401
    assert http_status(grpc.StatusCode.PERMISSION_DENIED) == 403
    assert http_status(grpc.StatusCode.INVALID_ARGUMENT) == 400
    assert http_status(grpc.StatusCode.FAILED_PRECONDITION) == 409
    assert http_status(grpc.StatusCode.UNAVAILABLE) == 503
    assert http_status(grpc.StatusCode.DATA_LOSS) == 502  # not placed: a bad gateway


def test_the_policy_allows_the_pages_import_map_by_its_hash_and_nothing_else_inline() -> None:
    page = (STATIC_DIR / "index.html").read_text()
    start = page.index('<script type="importmap">') + len('<script type="importmap">')
    content = page[start : page.index("</script>", start)]
    digest = base64.b64encode(hashlib.sha256(content.encode()).digest()).decode()
    policy = content_security_policy(page)
    assert f"script-src 'self' 'sha256-{digest}';" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "script-src 'self';" in content_security_policy("<html></html>")


def test_a_server_sent_event_is_one_line_of_json_with_its_id() -> None:
    assert sse("alarm", {"a": 1}, "5:12") == b'id: 5:12\nevent: alarm\ndata: {"a":1}\n\n'
    assert sse("posts", {"epoch": 5}) == b'event: posts\ndata: {"epoch":5}\n\n'


@pytest.mark.parametrize(
    ("issued_by", "status", "shown"),
    [
        ("policy:traffic_signal/sector-centre", command_pb2.SENT, False),
        ("policy:traffic_signal/sector-centre", command_pb2.ACKED, False),
        ("policy:street_lamp/dijon-1", command_pb2.QUEUED, False),
        ("policy:street_lamp/dijon-1", command_pb2.FAILED, True),  # gone wrong: shown
        ("policy:street_lamp/dijon-1", command_pb2.PENDING_APPROVAL, True),
        ("supervisor", command_pb2.SENT, True),  # an operator's: followed to the end
        ("supervisor", command_pb2.ACKED, True),
    ],
)
def test_the_page_follows_operators_commands_not_the_policies_routine(
    issued_by: str, status: command_pb2.CommandStatus.ValueType, shown: bool
) -> None:
    record = control_state_pb2.CommandRecord(status=status, issued_by=issued_by)
    assert streamed(operator_pb2.Event(command=record)) is shown
    assert streamed(operator_pb2.Event(alarm=operations_pb2.Alarm(originator="x")))
