"""The downlink gate's fence without MQTT: verdicts, raise_epoch (only etcd moves the
mark, never a frame), the mark on disk."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridges.downlink_frame import encode_command
from bridges.gate_book import (
    DropReason,
    GateBook,
    GateStateError,
    Verdict,
    decode_mark,
    encode_mark,
    load_mark,
    read_frame_header,
    store_mark,
)
from citypost.errors import (
    DeadLetterReason,
    DecodeError,
    FailedPreconditionError,
    InvalidArgumentError,
)
from protos.citypost.v1 import command_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def test_a_command_above_the_mark_asks_etcd_and_never_moves_the_mark() -> None:
    book = GateBook()
    assert book.decide(5) is Verdict.CONFIRM
    assert book.highest_epoch == 0  # the frame alone taught the book nothing
    assert book.dropped() == {}  # not a drop: the shell asks etcd first
    assert book.raise_epoch(5) is True  # etcd's leader key says 5: persist, please
    assert book.decide(5, after_confirm=True) is Verdict.PERSIST_FIRST
    assert book.persisted_epoch == 0  # not durable until the shell says so
    book.mark_persisted(5)
    assert book.decide(5) is Verdict.FORWARD  # equal: forwarded, nothing to persist


def test_stale_epoch_is_dropped_and_counted() -> None:
    book = GateBook(persisted_epoch=5)
    assert book.decide(4) is Verdict.DROP_STALE
    assert book.decide(0) is Verdict.DROP_STALE
    assert book.decide(4, after_confirm=True) is Verdict.DROP_STALE
    assert book.dropped() == {"stale_epoch": 3}
    assert book.highest_epoch == 5


def test_an_epoch_etcd_does_not_confirm_is_dropped_and_the_leader_goes_on() -> None:
    # The attack: a post's key signs frames of an epoch far above the leader's.
    book = GateBook(persisted_epoch=5)
    for forged in (6, 10**15, 2**64 - 1):
        assert book.decide(forged) is Verdict.CONFIRM
        assert book.raise_epoch(5) is False  # etcd: the leader is still 5
        assert book.decide(forged, after_confirm=True) is Verdict.DROP_UNCONFIRMED
    assert book.highest_epoch == 5 and book.persisted_epoch == 5
    assert book.decide(5) is Verdict.FORWARD  # the real leader's next command
    assert book.decide(4) is Verdict.DROP_STALE  # and the fence still holds below
    assert book.dropped() == {"unconfirmed_epoch": 3, "stale_epoch": 1}


def test_etcd_naming_no_leader_confirms_nothing() -> None:
    book = GateBook(persisted_epoch=5)
    assert book.decide(6) is Verdict.CONFIRM
    # The leader key is gone (its leader deposed, none elected): no raise_epoch.
    assert book.decide(6, after_confirm=True) is Verdict.DROP_UNCONFIRMED
    assert book.highest_epoch == 5


def test_etcd_naming_a_newer_leader_makes_the_command_stale_not_unconfirmed() -> None:
    book = GateBook(persisted_epoch=5)
    assert book.decide(7) is Verdict.CONFIRM
    assert book.raise_epoch(9) is True  # elected twice since: 9 holds the key
    assert book.decide(7, after_confirm=True) is Verdict.DROP_STALE
    assert book.dropped() == {"stale_epoch": 1}
    assert book.highest_epoch == 9
    assert book.decide(9, after_confirm=True) is Verdict.PERSIST_FIRST


def test_a_confirm_that_lost_the_race_to_the_watch_still_forwards() -> None:
    # The watch raised the mark to the command's epoch between the two decisions.
    book = GateBook(persisted_epoch=5)
    assert book.decide(6) is Verdict.CONFIRM
    assert book.raise_epoch(6) is True  # the leader watch
    book.mark_persisted(6)
    assert book.raise_epoch(6) is False  # the confirmer's answer, the same
    assert book.decide(6, after_confirm=True) is Verdict.FORWARD
    assert book.dropped() == {}


def test_epoch_zero_is_no_leader_s_even_on_a_gate_that_never_saw_one() -> None:
    book = GateBook()
    assert book.decide(0) is Verdict.CONFIRM  # equal to an empty mark: not confirmed
    assert book.decide(0, after_confirm=True) is Verdict.DROP_UNCONFIRMED
    book.raise_epoch(1)
    assert book.decide(0) is Verdict.DROP_STALE
    assert book.decide(1) is Verdict.PERSIST_FIRST


def test_a_failed_persist_makes_the_next_command_of_that_epoch_ask_again() -> None:
    book = GateBook(persisted_epoch=5)
    assert book.raise_epoch(6) is True
    assert book.decide(6) is Verdict.PERSIST_FIRST
    book.count_dropped(DropReason.PERSIST_FAILED)  # the shell could not write it
    assert book.decide(5) is Verdict.DROP_STALE  # the fence still holds in memory
    assert book.decide(6) is Verdict.PERSIST_FIRST  # and 6 is still not forwarded unpersisted
    assert book.dropped() == {"persist_failed": 1, "stale_epoch": 1}


def test_raise_epoch_fences_older_epochs_before_any_command() -> None:
    book = GateBook(persisted_epoch=3)
    assert book.raise_epoch(9) is True  # persist, please
    book.mark_persisted(9)
    assert book.decide(8) is Verdict.DROP_STALE
    assert book.decide(9) is Verdict.FORWARD
    assert book.raise_epoch(9) is False
    assert book.raise_epoch(4) is False  # never lowers
    assert book.highest_epoch == 9


def test_raise_epoch_not_yet_persisted_still_fences() -> None:
    book = GateBook()
    assert book.raise_epoch(9) is True
    assert book.decide(8) is Verdict.DROP_STALE
    assert book.decide(9) is Verdict.PERSIST_FIRST


def test_mark_persisted_never_lowers() -> None:
    book = GateBook(persisted_epoch=7)
    book.mark_persisted(3)
    assert book.persisted_epoch == 7
    assert book.decide(7) is Verdict.FORWARD


def test_persisting_an_epoch_never_confirms_it() -> None:
    book = GateBook(persisted_epoch=5)
    assert book.decide(8) is Verdict.CONFIRM
    with pytest.raises(FailedPreconditionError):
        book.mark_persisted(8)  # a shell that wrote a frame's epoch: refused
    assert (book.highest_epoch, book.persisted_epoch) == (5, 5)
    assert book.decide(8, after_confirm=True) is Verdict.DROP_UNCONFIRMED


def test_forward_count_and_bad_epochs() -> None:
    book = GateBook()
    book.count_forwarded()
    book.count_forwarded()
    assert book.forwarded == 2
    with pytest.raises(InvalidArgumentError):
        book.decide(-1)
    with pytest.raises(InvalidArgumentError):
        book.decide(-1, after_confirm=True)
    with pytest.raises(InvalidArgumentError):
        GateBook(persisted_epoch=-2)


def test_the_same_command_id_is_forwarded_again_under_a_new_epoch() -> None:
    # No deduplication here: a new leader re-sends with the same command_id.
    book = GateBook(persisted_epoch=5)
    assert book.decide(5) is Verdict.FORWARD
    assert book.decide(5) is Verdict.FORWARD
    assert book.decide(6) is Verdict.CONFIRM
    book.raise_epoch(6)
    assert book.decide(6, after_confirm=True) is Verdict.PERSIST_FIRST


# Any interleaving of frames (any epoch, before or after asking etcd) and of etcd's
# answers: the mark is the highest epoch etcd gave, and only that epoch goes through.
_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["frame", "frame_after_confirm", "etcd"]),
        st.integers(min_value=0, max_value=12),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(start=st.integers(min_value=0, max_value=6), steps=_STEPS)
def test_only_etcd_moves_the_mark_and_only_its_epoch_passes(
    start: int, steps: list[tuple[str, int]]
) -> None:
    book = GateBook(persisted_epoch=start)
    confirmed = start
    stale = unconfirmed = 0
    for kind, epoch in steps:
        if kind == "etcd":
            book.raise_epoch(epoch)
            book.mark_persisted(epoch)
            confirmed = max(confirmed, epoch)
            continue
        asked = kind == "frame_after_confirm"
        verdict = book.decide(epoch, after_confirm=asked)
        if epoch < confirmed:
            expected, stale = Verdict.DROP_STALE, stale + 1
        elif epoch == confirmed > 0:
            expected = Verdict.FORWARD  # every raised epoch was persisted at once here
        elif asked:
            expected, unconfirmed = Verdict.DROP_UNCONFIRMED, unconfirmed + 1
        else:
            expected = Verdict.CONFIRM
        assert verdict is expected, (kind, epoch, confirmed)
        assert book.highest_epoch == confirmed
    counted = book.dropped()
    assert counted.get("stale_epoch", 0) == stale
    assert counted.get("unconfirmed_epoch", 0) == unconfirmed


# --- frame header ------------------------------------------------------------------------


def test_read_frame_header_matches_the_frame_encoder() -> None:
    command_id = str(uuid.uuid4())
    command = command_pb2.Command(command_id=command_id, epoch=2**40 + 3)
    command.set_brightness.brightness_pct = 40
    header = read_frame_header(encode_command(command))
    assert header.epoch == 2**40 + 3
    assert header.command_id == command_id


@pytest.mark.parametrize("data", [b"", b"\x01" * 24, b"\x02" + b"\x00" * 30])
def test_read_frame_header_refuses_what_has_no_header(data: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        read_frame_header(data)
    assert caught.value.reason is DeadLetterReason.BAD_ENVELOPE


# --- the mark on disk --------------------------------------------------------------------


def test_mark_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "gate" / "mark.json"
    store_mark(path, 6)
    assert load_mark(path) == 6
    store_mark(path, 2**63 + 5)  # the frame's epoch is a u64
    assert load_mark(path) == 2**63 + 5
    assert [p.name for p in path.parent.iterdir()] == ["mark.json"]  # no temp file left


def test_missing_mark_file_is_zero(tmp_path: Path) -> None:
    assert load_mark(tmp_path / "nothing-here.json") == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{not json",
        b"6",
        b'{"version": 1}',
        b'{"version": 1, "highest_epoch": -1}',
        b'{"version": 1, "highest_epoch": "6"}',
        b'{"version": 2, "highest_epoch": 6}',
        b"\xff\xfe",
    ],
)
def test_corrupt_mark_file_is_an_error_not_a_reset(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "mark.json"
    path.write_bytes(raw)
    with pytest.raises(GateStateError):
        load_mark(path)


def test_encode_decode_mark() -> None:
    assert decode_mark(encode_mark(0)) == 0
    assert decode_mark(encode_mark(123)) == 123
    with pytest.raises(InvalidArgumentError):
        encode_mark(-1)
