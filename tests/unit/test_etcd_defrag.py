"""Which etcd members are worth blocking for a defragmentation."""

from __future__ import annotations

import pytest

from failover.etcd_defrag import MemberSize, worth_defragmenting

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

MB = 1_000_000


@pytest.mark.parametrize(
    ("db_size", "in_use", "worth"),
    [
        (200 * MB, 20 * MB, True),  # mostly free, and much of it
        (200 * MB, 150 * MB, False),  # 50 MB free: a quarter of the file
        (20 * MB, 1 * MB, False),  # mostly free, but little to gain
        (64 * MB, 0, True),  # exactly the bounds
        (10 * MB, 12 * MB, False),  # in use above the file (a racy status): nothing free
    ],
)
def test_worth_defragmenting_asks_for_enough_free_space_in_bytes_and_share(
    db_size: int, in_use: int, worth: bool
) -> None:
    size = MemberSize("127.0.0.1:2379", db_size, in_use)
    assert worth_defragmenting(size, min_free_bytes=64 * MB, min_free_ratio=0.5) is worth
