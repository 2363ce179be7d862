"""The link proxy's decisions: link settings, a chunk's delay under loss, in-order delivery."""

from __future__ import annotations

import random
import threading

import pytest

from chaos.link_proxy import (
    RTO_MIN_MS,
    InOrderSchedule,
    LinkProxy,
    LinkSettings,
    LinkState,
    parse_endpoint,
    retransmission_delay_ms,
)
from citypost.errors import FailedPreconditionError, InfrastructureError, InvalidArgumentError

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class ScriptedRandom(random.Random):
    """A random source that returns the given draws, in order."""

    def __init__(self, draws: list[float]) -> None:
        super().__init__(0)
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)


def test_no_loss_means_no_retransmission_and_no_draw() -> None:
    rng = ScriptedRandom([])
    assert retransmission_delay_ms(0.0, rng) == 0


def test_each_lost_transmission_waits_one_rto_which_doubles() -> None:
    # Lost, lost, through: 200 + 400 ms.
    assert retransmission_delay_ms(0.3, ScriptedRandom([0.1, 0.2, 0.9])) == 600
    # Through at once.
    assert retransmission_delay_ms(0.3, ScriptedRandom([0.3])) == 0
    assert RTO_MIN_MS == 200


def test_the_rto_is_capped_and_so_are_the_retransmissions() -> None:
    rng = ScriptedRandom([0.0] * 10)
    delay = retransmission_delay_ms(0.5, rng, rto_max_ms=1000, max_retransmissions=5)
    assert delay == 200 + 400 + 800 + 1000 + 1000
    assert len(rng.draws) == 5  # gave up drawing after the last retransmission


def test_a_seeded_source_gives_the_same_delays() -> None:
    def delays(seed: int) -> list[int]:
        rng = random.Random(seed)
        return [retransmission_delay_ms(0.3, rng) for _ in range(200)]

    assert delays(7) == delays(7)
    assert any(delays(7))


def test_the_share_of_delayed_chunks_is_the_loss() -> None:
    rng = random.Random(42)
    n = 20_000
    delays = [retransmission_delay_ms(0.3, rng) for _ in range(n)]
    delayed = sum(1 for d in delays if d > 0) / n
    assert 0.28 < delayed < 0.32
    assert all(d == 0 or d >= RTO_MIN_MS for d in delays)
    # Two losses in a row (>= 600 ms) happen about loss² of the time.
    assert 0.07 < sum(1 for d in delays if d >= 600) / n < 0.11


def test_a_degraded_link_adds_latency_and_loss_delay() -> None:
    link = LinkSettings.degraded(250, 0.3)
    assert link.state is LinkState.DEGRADED and link.forwarding
    assert link.chunk_delay_ms(ScriptedRandom([0.9])) == 250
    assert link.chunk_delay_ms(ScriptedRandom([0.1, 0.9])) == 450


def test_open_and_partitioned_links_add_no_delay() -> None:
    rng = ScriptedRandom([])  # would fail if a draw were made
    assert LinkSettings.open().chunk_delay_ms(rng) == 0
    partitioned = LinkSettings.partitioned()
    assert partitioned.state is LinkState.PARTITIONED
    assert not partitioned.forwarding
    assert partitioned.chunk_delay_ms(rng) == 0
    assert LinkSettings.open().forwarding


@pytest.mark.parametrize(
    ("latency_ms", "loss"), [(-1, 0.0), (10, -0.1), (10, 1.0), (10, float("nan"))]
)
def test_bad_degradations_are_refused(latency_ms: int, loss: float) -> None:
    with pytest.raises(InvalidArgumentError):
        LinkSettings.degraded(latency_ms, loss)


def test_only_a_degraded_link_has_latency() -> None:
    with pytest.raises(InvalidArgumentError):
        LinkSettings(state=LinkState.OPEN, latency_ms=10)
    with pytest.raises(InvalidArgumentError):
        LinkSettings(state=LinkState.PARTITIONED, loss=0.1)


def test_a_later_chunk_never_overtakes_an_earlier_one() -> None:
    schedule = InOrderSchedule()
    # A chunk that lost a transmission (due at 1.2 s), then one that did not.
    first = schedule.due(now=0.0, delay_s=1.2)
    second = schedule.due(now=0.1, delay_s=0.2)
    assert first == pytest.approx(1.2)
    assert second >= first
    # Once the link is healed, a new chunk still waits behind the delayed ones...
    assert schedule.due(now=0.5, delay_s=0.0) >= first
    # ...and later ones go at once.
    assert schedule.due(now=2.0, delay_s=0.0) == pytest.approx(2.0)


def test_due_times_are_monotonic_for_any_delays() -> None:
    rng = random.Random(3)
    link = LinkSettings.degraded(50, 0.3)
    schedule = InOrderSchedule()
    now = 0.0
    dues = []
    for _ in range(500):
        now += rng.random() / 10
        dues.append(schedule.due(now, link.chunk_delay_ms(rng) / 1000))
        assert dues[-1] >= now + 0.05
    assert dues == sorted(dues)


def test_endpoints_are_parsed() -> None:
    assert parse_endpoint("127.0.0.1:2379") == ("127.0.0.1", 2379)
    assert parse_endpoint("[::1]:2379") == ("::1", 2379)
    for bad in ("127.0.0.1", "127.0.0.1:x", ":2379", "h:0", "h:70000"):
        with pytest.raises(InvalidArgumentError):
            parse_endpoint(bad)


def test_a_proxy_checks_its_upstreams_and_keeps_its_state_before_start() -> None:
    with pytest.raises(InvalidArgumentError):
        LinkProxy([])
    with pytest.raises(InvalidArgumentError):
        LinkProxy("127.0.0.1:2379")
    proxy = LinkProxy(["127.0.0.1:2379"])
    assert proxy.state is LinkState.OPEN
    proxy.degrade(100, 0.1)
    assert proxy.state is LinkState.DEGRADED
    proxy.partition()
    assert proxy.state is LinkState.PARTITIONED
    proxy.heal()
    assert proxy.state is LinkState.OPEN
    with pytest.raises(FailedPreconditionError):
        _ = proxy.endpoints
    proxy.stop()  # never started: nothing to do, and twice is fine
    proxy.stop()
    with pytest.raises(FailedPreconditionError):
        proxy.start()


def test_a_failed_start_stops_the_proxy_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    async def cannot_listen(self: LinkProxy) -> list[str]:
        raise OSError("no socket for you")

    monkeypatch.setattr(LinkProxy, "_open", cannot_listen)
    proxy = LinkProxy(["127.0.0.1:2379"], name="failing")
    with pytest.raises(InfrastructureError, match="cannot listen"):
        proxy.start()
    assert not any(t.name == "link-proxy-failing" for t in threading.enumerate())
    proxy.stop()  # idempotent after the failed start
    proxy.partition()  # control after stop only records the state
    assert proxy.state is LinkState.PARTITIONED
