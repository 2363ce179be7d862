"""The downlink gate's fence without MQTT: verdicts, raise_epoch, the mark on disk."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

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
from citypost.errors import DeadLetterReason, DecodeError, InvalidArgumentError
from protos.citypost.v1 import command_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def test_first_command_of_a_higher_epoch_asks_to_persist_first() -> None:
    book = GateBook()
    assert book.decide(5) is Verdict.PERSIST_FIRST
    assert book.highest_epoch == 5
    assert book.persisted_epoch == 0  # not durable until the shell says so
    book.mark_persisted(5)
    assert book.decide(5) is Verdict.FORWARD  # equal: forwarded, nothing to persist


def test_stale_epoch_is_dropped_and_counted() -> None:
    book = GateBook(persisted_epoch=5)
    assert book.decide(4) is Verdict.DROP_STALE
    assert book.decide(0) is Verdict.DROP_STALE
    assert book.dropped() == {"stale_epoch": 2}
    assert book.highest_epoch == 5


def test_higher_epoch_raises_the_mark_and_fences_the_older_one() -> None:
    book = GateBook(persisted_epoch=5)
    assert book.decide(6) is Verdict.PERSIST_FIRST
    book.mark_persisted(6)
    assert book.decide(5) is Verdict.DROP_STALE
    assert book.decide(6) is Verdict.FORWARD
    assert book.decide(7) is Verdict.PERSIST_FIRST


def test_a_failed_persist_makes_the_next_command_of_that_epoch_ask_again() -> None:
    book = GateBook(persisted_epoch=5)
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


def test_forward_count_and_bad_epochs() -> None:
    book = GateBook()
    book.count_forwarded()
    book.count_forwarded()
    assert book.forwarded == 2
    with pytest.raises(InvalidArgumentError):
        book.decide(-1)
    with pytest.raises(InvalidArgumentError):
        GateBook(persisted_epoch=-2)


def test_the_same_command_id_is_forwarded_again_under_a_new_epoch() -> None:
    # No deduplication here: a new leader re-sends with the same command_id.
    book = GateBook(persisted_epoch=5)
    assert book.decide(5) is Verdict.FORWARD
    assert book.decide(5) is Verdict.FORWARD
    assert book.decide(6) is Verdict.PERSIST_FIRST


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
