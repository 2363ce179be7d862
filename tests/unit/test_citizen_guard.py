"""The citizen listener's guard, without a server: the app credential, the peer's address
as a key, the limits keyed on what the caller cannot choose, the throttled audit."""

from __future__ import annotations

import contextvars
from pathlib import Path

import pytest

from api.citizen_guard import (
    APP_METADATA,
    AppCaller,
    Budget,
    CitizenGuard,
    RefusalAudit,
    ReportBudgets,
    ReportLimits,
    app_caller,
    exhausted,
    parse_app_credential,
    peer_key,
)
from api.rate_limit import KeyedRateLimiter, Limit, acquire_all
from citypost.errors import ConfigError, ResourceExhaustedError, UnauthenticatedError
from protos.citypost.v1 import control_state_pb2
from security.apps import AppBook, AppCredential

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

REPORT = "/citypost.v1.CitizenService/ReportIncident"
TRAFFIC = "/citypost.v1.CitizenService/GetTrafficConditions"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Context:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


# --- the credential ------------------------------------------------------------------------


def test_credential_parsed_from_metadata() -> None:
    assert parse_app_credential([(APP_METADATA, "citizen-app:s3cr:et")]) == (
        "citizen-app",
        "s3cr:et",
    )
    assert parse_app_credential([("other", "x"), (APP_METADATA, b"app-1:abc")]) == (
        "app-1",
        "abc",
    )


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        ([], "no app credential: the citizen app sends x-citypost-app"),
        ([(APP_METADATA, "just-a-secret")], "not '<app id>:<secret>' (no ':')"),
        ([(APP_METADATA, ":secret")], "(no app id)"),
        ([(APP_METADATA, "citizen-app:")], "(no secret)"),
        ([(APP_METADATA, "a:b"), (APP_METADATA, "c:d")], "given 2 times"),
    ],
)
def test_missing_or_malformed_credential_names_what_is_wrong(
    metadata: list[tuple[str, str]], words: str
) -> None:
    with pytest.raises(UnauthenticatedError) as refused:
        parse_app_credential(metadata)
    assert words in refused.value.message


# --- the address ---------------------------------------------------------------------------


def test_peer_key_is_the_host_and_an_ipv6_address_counts_by_its_64() -> None:
    assert peer_key("ipv4:127.0.0.1:54321") == "127.0.0.1"
    assert peer_key("ipv4:10.1.2.3:1") == peer_key("ipv4:10.1.2.3:2")  # the port is not kept
    # A phone may use any address of its /64 (privacy addresses): one key for all.
    a = peer_key("ipv6:[2001:db8:1:2::1]:443")
    b = peer_key("ipv6:%5B2001:db8:1:2:aaaa:bbbb:cccc:dddd%5D:5000")  # as newer gRPC says it
    assert a == b == "2001:db8:1:2::/64"
    assert peer_key("ipv6:[2001:db8:1:3::1]:443") != a
    assert peer_key("ipv6:[::ffff:192.0.2.7]:80") == "192.0.2.7"
    assert peer_key("unix:/run/post.sock") == "unix:/run/post.sock"
    assert peer_key("") == "unknown"


# --- the limits ----------------------------------------------------------------------------


def test_acquire_all_takes_from_every_limit_or_from_none() -> None:
    clock = Clock()
    narrow = KeyedRateLimiter(1.0, 5, monotonic=clock)
    wide = KeyedRateLimiter(1.0, 1, monotonic=clock)
    limits = [Limit("narrow", narrow, "k"), Limit("wide", wide, "")]
    assert acquire_all(limits) is None
    refused = acquire_all(limits)
    assert refused is not None
    assert (refused.limit.name, refused.wait_s) == ("wide", pytest.approx(1.0))
    # The wide limit refused: the narrow one lost nothing for it.
    assert narrow.wait_s("k") == 0.0
    assert [narrow.try_acquire("k") for _ in range(4)] == [0.0] * 4
    assert narrow.try_acquire("k") > 0


def test_rotating_reporter_ids_do_not_dodge_the_address_limit() -> None:
    clock = Clock()
    limits = ReportLimits(ReportBudgets(per_address=Budget(3.0, 10)), monotonic=clock)
    phone = AppCaller("citizen-app", "203.0.113.9")
    # Every report from another made-up reporter: the caller's own key does not change.
    taken = [acquire_all(limits.limits(phone)) is None for _ in range(12)]
    assert taken == [True] * 10 + [False] * 2
    refusal = acquire_all(limits.limits(phone))
    assert refusal is not None
    error = exhausted(refusal)
    assert error.message == (
        "too many reports from this address (203.0.113.9) with app citizen-app "
        "(at most 3 a minute, 10 at once); retry in 20 s"
    )
    # Another address of the same app is not held back by this one.
    assert acquire_all(limits.limits(AppCaller("citizen-app", "198.51.100.1"))) is None
    clock.now += 20
    assert acquire_all(limits.limits(phone)) is None


def test_one_app_cannot_take_the_posts_whole_budget_nor_one_address_the_apps() -> None:
    clock = Clock()
    budgets = ReportBudgets(
        per_address=Budget(1.0, 2), per_app=Budget(4.0, 4), per_post=Budget(6.0, 6)
    )
    limits = ReportLimits(budgets, monotonic=clock)

    def report(app: str, address: str) -> str:
        refusal = acquire_all(limits.limits(AppCaller(app, address)))
        return "ok" if refusal is None else exhausted(refusal).message

    # An app's budget is spread over addresses: 2 each, the app's 4 after two addresses.
    assert [report("a", f"10.0.0.{i}") for i in (1, 1, 2, 2)] == ["ok"] * 4
    assert report("a", "10.0.0.3").startswith("too many reports through app a")
    # Another app still reports, until the post's budget (6) is spent by both.
    assert [report("b", "10.0.1.1"), report("b", "10.0.1.2")] == ["ok", "ok"]
    refused = report("b", "10.0.1.3")
    assert refused.startswith("too many reports to this post from all citizens")
    assert "retry in 10 s" in refused


def test_without_an_app_the_address_and_the_post_limit() -> None:
    limits = ReportLimits(monotonic=Clock())
    names = [limit.name for limit in limits.limits(AppCaller("", "127.0.0.1"))]
    assert len(names) == 2
    assert names[0].startswith("too many reports from this address (127.0.0.1) (at most")
    assert names[1].startswith("too many reports to this post")


# --- the guard -----------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> tuple[AppBook, AppCredential]:
    book = AppBook(tmp_path / "apps.json")
    return book, book.add("citizen-app", now=1_800_000_000.0)


def _guard(
    book: AppBook, audited: list[control_state_pb2.AuditEntry], clock: Clock, **kw: object
) -> CitizenGuard:
    refusals = RefusalAudit(audited.append, now=lambda: 1_800_000_000.0, monotonic=clock)
    return CitizenGuard(book, refusals=refusals, monotonic=clock, **kw)  # type: ignore[arg-type]


def test_guard_admits_a_valid_app_and_tells_the_servicer_who(
    app: tuple[AppBook, AppCredential],
) -> None:
    book, credential = app
    guard = _guard(book, [], Clock())
    # In a context of its own, as each call has: the test's own stays clean.
    call = contextvars.copy_context()
    caller = call.run(
        guard.admit,
        TRAFFIC,
        [(APP_METADATA, credential.header)],
        Context("ipv4:192.0.2.1:999"),
        None,
    )
    assert caller.name == "app:citizen-app"
    assert call[app_caller] == AppCaller("citizen-app", "192.0.2.1")
    assert app_caller.get() is None
    # The health check needs nothing (a load balancer knows no app).
    health = guard.admit("/grpc.health.v1.Health/Check", [], Context("ipv4:1.1.1.1:1"), None)
    assert not health.known


def test_guard_refuses_and_audits_a_missing_unknown_or_wrong_credential(
    app: tuple[AppBook, AppCredential],
) -> None:
    book, credential = app
    audited: list[control_state_pb2.AuditEntry] = []
    guard = _guard(book, audited, Clock())
    context = Context("ipv4:198.51.100.7:4000")
    cases = [
        ([], "no app credential"),
        ([(APP_METADATA, "citizen-app:" + "x" * 43)], "app credential refused"),
        ([(APP_METADATA, "other-app:" + credential.secret)], "app credential refused"),
    ]
    for metadata, words in cases:
        with pytest.raises(UnauthenticatedError) as refused:
            guard.admit(REPORT, metadata, context, None)
        assert words in refused.value.message
    details = [entry.detail for entry in audited]
    assert [entry.action for entry in audited] == ["rpc.refused"] * 3
    assert {entry.outcome for entry in audited} == {control_state_pb2.AUDIT_REFUSED}
    assert {entry.target for entry in audited} == {REPORT}
    assert audited[0].actor == "peer:198.51.100.7"
    # The audit has the precise reason the caller is not told.
    assert "wrong secret for app 'citizen-app'" in details[1]
    assert "unknown app 'other-app'" in details[2]
    book.disable("citizen-app")
    with pytest.raises(UnauthenticatedError):
        guard.admit(REPORT, [(APP_METADATA, credential.header)], context, None)
    assert "is disabled" in audited[-1].detail


def test_guard_limits_calls_per_app_and_address(app: tuple[AppBook, AppCredential]) -> None:
    book, credential = app
    clock = Clock()
    audited: list[control_state_pb2.AuditEntry] = []
    guard = _guard(book, audited, clock, calls=Budget(60.0, 3))
    metadata = [(APP_METADATA, credential.header)]

    def admit(peer: str) -> None:
        contextvars.copy_context().run(guard.admit, TRAFFIC, metadata, Context(peer), None)

    for _ in range(3):
        admit("ipv4:192.0.2.1:1")
    with pytest.raises(ResourceExhaustedError, match=r"too many calls .*retry in 1 s"):
        admit("ipv4:192.0.2.1:2")
    admit("ipv4:192.0.2.2:1")  # another address
    assert audited[-1].actor == "app:citizen-app@192.0.2.1"


def test_a_flood_of_refusals_is_audited_sparingly_and_counted() -> None:
    clock = Clock()
    audited: list[control_state_pb2.AuditEntry] = []
    refusals = RefusalAudit(audited.append, every_s=10.0, burst=2, monotonic=clock)
    flooder, other = AppCaller("", "203.0.113.1"), AppCaller("", "203.0.113.2")
    error = UnauthenticatedError("no app credential")
    for _ in range(50):
        refusals.record(caller=flooder, target=REPORT, error=error, reason="no app credential")
    refusals.record(caller=other, target=REPORT, error=error, reason="no app credential")
    assert [e.actor for e in audited] == ["peer:203.0.113.1"] * 2 + ["peer:203.0.113.2"]
    clock.now += 10
    refusals.record(caller=flooder, target=REPORT, error=error, reason="no app credential")
    assert "and 48 more refusals from 203.0.113.1 not audited since" in audited[-1].detail


def test_the_citizen_listener_serves_nothing_but_the_citizens_service(
    app: tuple[AppBook, AppCredential],
) -> None:
    guard = _guard(app[0], [], Clock())
    guard.check_methods([REPORT, "/grpc.health.v1.Health/Check"])
    with pytest.raises(ConfigError, match="OperatorService/SendCommand"):
        guard.check_methods([REPORT, "/citypost.v1.OperatorService/SendCommand"])
