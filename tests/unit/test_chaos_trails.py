"""The drill's accumulators over hand-made observations: the leader key's history as
terms (`TermBook`), the posts' uplink counters as arrivals (`telemetry_from_samples`)
and as recent uplinks of one post (`recent_uplinks`)."""

from __future__ import annotations

import pytest

from chaos.evidence import LeaderTerm, Telemetry
from chaos.trails import CounterSample, TermBook, recent_uplinks, telemetry_from_samples

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

T0 = 1_700_000_000_000


def at(offset_ms: int) -> int:
    return T0 + offset_ms


def sample(offset_ms: int, post: str, **uplinks: int) -> CounterSample:
    return CounterSample(at(offset_ms), post, uplinks)


def by_class(telemetry: tuple[Telemetry, ...]) -> dict[str, tuple[int, ...]]:
    return {t.asset_class: t.at_ms for t in telemetry}


# --- TermBook -------------------------------------------------------------------------------


def test_an_empty_book_has_no_terms() -> None:
    book = TermBook()
    assert book.terms() == ()
    assert book.current() is None


def test_an_absent_key_first_opens_nothing() -> None:
    book = TermBook()
    book.observe(at(0), None)
    assert book.terms() == ()
    assert book.current() is None


def test_the_first_observation_opens_a_term() -> None:
    book = TermBook()
    book.observe(at(100), 5, "primary")
    assert book.terms() == (LeaderTerm(5, "primary", at(100), None),)
    assert book.current() == LeaderTerm(5, "primary", at(100), None)


def test_the_same_epoch_again_changes_nothing() -> None:
    book = TermBook()
    book.observe(at(100), 5, "primary")
    book.observe(at(200), 5, "primary")
    book.observe(at(300), 5, "primary")
    assert book.terms() == (LeaderTerm(5, "primary", at(100), None),)
    assert book.current() == LeaderTerm(5, "primary", at(100), None)


def test_the_key_deleted_closes_the_term_at_that_time() -> None:
    book = TermBook()
    book.observe(at(100), 5, "primary")
    book.observe(at(700), None)
    assert book.terms() == (LeaderTerm(5, "primary", at(100), at(700)),)
    assert book.current() is None
    # Seen absent again: nothing more to close.
    book.observe(at(900), None)
    assert book.terms() == (LeaderTerm(5, "primary", at(100), at(700)),)


def test_a_new_epoch_closes_the_old_term_and_opens_its_own_at_the_same_instant() -> None:
    book = TermBook()
    book.observe(at(100), 5, "primary")
    book.observe(at(900), 9, "backup")
    assert book.terms() == (
        LeaderTerm(5, "primary", at(100), at(900)),
        LeaderTerm(9, "backup", at(900), None),
    )
    assert book.current() == LeaderTerm(9, "backup", at(900), None)


def test_terms_are_in_observation_order_with_the_open_one_last() -> None:
    book = TermBook()
    book.observe(at(100), 5, "primary")
    book.observe(at(1_000), None)
    book.observe(at(1_500), 9, "backup")
    book.observe(at(3_000), 12, "primary")
    assert book.terms() == (
        LeaderTerm(5, "primary", at(100), at(1_000)),
        LeaderTerm(9, "backup", at(1_500), at(3_000)),
        LeaderTerm(12, "primary", at(3_000), None),
    )
    assert book.current() == LeaderTerm(12, "primary", at(3_000), None)


def test_terms_is_a_snapshot_not_a_live_view() -> None:
    book = TermBook()
    book.observe(at(100), 5, "primary")
    before = book.terms()
    book.observe(at(200), 9, "backup")
    assert before == (LeaderTerm(5, "primary", at(100), None),)


# --- telemetry_from_samples -----------------------------------------------------------------


def test_the_first_sample_of_a_post_is_only_a_baseline() -> None:
    got = telemetry_from_samples([sample(0, "primary", bus=40)])
    assert got == (Telemetry("bus", ()),)


def test_growth_by_n_gives_n_arrivals_at_the_sample_time() -> None:
    got = telemetry_from_samples([sample(0, "primary", bus=10), sample(1_000, "primary", bus=13)])
    assert by_class(got) == {"bus": (at(1_000),) * 3}


def test_arrivals_accumulate_over_samples_and_input_order_does_not_matter() -> None:
    samples = [
        sample(2_000, "primary", bus=4),
        sample(0, "primary", bus=0),
        sample(1_000, "primary", bus=1),
    ]
    assert by_class(telemetry_from_samples(samples)) == {
        "bus": (at(1_000), at(2_000), at(2_000), at(2_000))
    }


def test_two_posts_are_merged_per_class() -> None:
    samples = [
        sample(0, "primary", bus=0),
        sample(500, "backup", bus=5),
        sample(1_000, "primary", bus=2),
        sample(1_500, "backup", bus=6),
    ]
    # Each post's growth against its own previous sample, never against the other's.
    assert by_class(telemetry_from_samples(samples)) == {"bus": (at(1_000), at(1_000), at(1_500))}


def test_classes_come_out_sorted_by_name() -> None:
    samples = [
        sample(0, "primary", water_meter=0, bus=0),
        sample(1_000, "primary", water_meter=1, bus=1),
    ]
    assert [t.asset_class for t in telemetry_from_samples(samples)] == ["bus", "water_meter"]


def test_a_counter_that_went_down_counts_its_new_value() -> None:
    # The post restarted between the samples: its counter began again from zero.
    samples = [sample(0, "primary", bus=50), sample(1_000, "primary", bus=3)]
    assert by_class(telemetry_from_samples(samples)) == {"bus": (at(1_000),) * 3}


def test_a_class_new_in_a_later_sample_grows_from_zero() -> None:
    samples = [sample(0, "primary", bus=1), sample(1_000, "primary", bus=1, parking=2)]
    assert by_class(telemetry_from_samples(samples)) == {
        "bus": (),
        "parking": (at(1_000), at(1_000)),
    }


def test_samples_before_from_ms_are_only_baselines() -> None:
    samples = [
        sample(0, "primary", bus=0),
        sample(1_000, "primary", bus=4),  # before from_ms: no arrivals, but a baseline
        sample(3_000, "primary", bus=6),
    ]
    got = telemetry_from_samples(samples, from_ms=at(2_000))
    assert by_class(got) == {"bus": (at(3_000), at(3_000))}


def test_a_sample_exactly_at_from_ms_counts() -> None:
    samples = [sample(0, "primary", bus=0), sample(2_000, "primary", bus=1)]
    got = telemetry_from_samples(samples, from_ms=at(2_000))
    assert by_class(got) == {"bus": (at(2_000),)}


def test_the_first_sample_after_from_ms_without_an_earlier_one_is_a_baseline() -> None:
    samples = [sample(3_000, "backup", bus=30), sample(4_000, "backup", bus=31)]
    got = telemetry_from_samples(samples, from_ms=at(2_000))
    assert by_class(got) == {"bus": (at(4_000),)}


def test_a_class_seen_without_growth_is_present_with_no_arrivals() -> None:
    samples = [
        sample(0, "primary", bus=5, streetlight=2),
        sample(1_000, "primary", bus=6, streetlight=2),
    ]
    got = telemetry_from_samples(samples)
    assert got == (Telemetry("bus", (at(1_000),)), Telemetry("streetlight", ()))


def test_no_samples_no_telemetry() -> None:
    assert telemetry_from_samples([]) == ()


# --- recent_uplinks -------------------------------------------------------------------------


def test_fewer_than_two_samples_in_the_window_gives_nothing() -> None:
    now = at(10_000)
    assert recent_uplinks([], "primary", 5_000, now) == {}
    assert recent_uplinks([sample(9_000, "primary", bus=3)], "primary", 5_000, now) == {}
    # Two samples, but one is out of the window.
    two = [sample(1_000, "primary", bus=0), sample(9_000, "primary", bus=3)]
    assert recent_uplinks(two, "primary", 5_000, now) == {}


def test_the_window_starts_at_now_minus_window_inclusive() -> None:
    samples = [
        sample(4_000, "primary", bus=0),
        sample(4_999, "primary", bus=1),  # one millisecond too early
        sample(5_000, "primary", bus=10),  # the window's first sample
        sample(8_000, "primary", bus=15),
        sample(10_000, "primary", bus=17),
    ]
    assert recent_uplinks(samples, "primary", 5_000, at(10_000)) == {"bus": 7}


def test_growth_is_summed_between_consecutive_samples_in_time_order() -> None:
    samples = [
        sample(10_000, "primary", bus=30, parking=4),
        sample(7_000, "primary", bus=20, parking=1),
        sample(8_500, "primary", bus=25, parking=9),
    ]
    # parking: 1 -> 9 (+8), then 9 -> 4 (went down: restarted, +4)
    assert recent_uplinks(samples, "primary", 5_000, at(10_000)) == {"bus": 10, "parking": 12}


def test_only_the_named_post_counts() -> None:
    samples = [
        sample(6_000, "primary", bus=10),
        sample(6_000, "backup", bus=100),
        sample(9_000, "backup", bus=400),
        sample(9_500, "primary", bus=12),
    ]
    assert recent_uplinks(samples, "primary", 5_000, at(10_000)) == {"bus": 2}
    assert recent_uplinks(samples, "backup", 5_000, at(10_000)) == {"bus": 300}
    assert recent_uplinks(samples, "elsewhere", 5_000, at(10_000)) == {}


def test_a_restart_in_the_window_counts_the_new_counter_from_zero() -> None:
    samples = [
        sample(6_000, "primary", bus=10),
        sample(7_000, "primary", bus=15),
        sample(9_000, "primary", bus=4, parking=2),  # restarted: bus went down
    ]
    # 5 before the restart, 4 after it; parking new in the newest sample counts from zero.
    assert recent_uplinks(samples, "primary", 5_000, at(10_000)) == {"bus": 9, "parking": 2}
