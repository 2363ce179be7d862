"""Giving etcd's disk space back: each member's database defragmented, one at a time.

etcd compacts its history by itself (every 10 minutes here), which frees pages
inside each member's database file but does not shrink the file; etcd's quota
counts the file, and once it is reached every write is refused. Only a
defragmentation rewrites the file without its free pages. It blocks the member it
runs on (reads and writes) while it lasts, so members go one after the other,
and only one whose file is mostly free space is worth it (etcd's operations
guide; etcd-io's own defrag tool judges by the same two sizes).

With mutual TLS (`tls`), etcd 3.4 lets only a user with the root role defragment
(security/etcd_access.py gives it to the posts for this); any certificate of the
city's CA may ask a member's status.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aetcd
import grpc
from aetcd import rpc

from citypost.errors import InfrastructureError
from failover.etcd_client import etcd_client
from security.pki_store import Identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberSize:
    endpoint: str
    db_size: int  # the file, as the quota counts it
    in_use: int  # what its live pages hold

    @property
    def free(self) -> int:
        return max(0, self.db_size - self.in_use)


@dataclass(frozen=True)
class Defragmented:
    before: MemberSize
    after: MemberSize


def worth_defragmenting(size: MemberSize, *, min_free_bytes: int, min_free_ratio: float) -> bool:
    """Enough free space, in bytes and as a share of the file, to pay for blocking it."""
    return size.free >= min_free_bytes and size.free >= min_free_ratio * size.db_size


def _client(endpoint: str, timeout: float, tls: Identity | None) -> aetcd.Client:
    # One member only: a defragmentation and its sizes are per member.
    return etcd_client([endpoint], timeout=timeout, tls=tls)


async def _size(client: aetcd.Client, endpoint: str, timeout: float) -> MemberSize:
    # aetcd's status() leaves out dbSizeInUse; the Maintenance API's answer has it.
    answer = await client.maintenancestub.Status(rpc.StatusRequest(), timeout=timeout)
    return MemberSize(endpoint, int(answer.dbSize), int(answer.dbSizeInUse))


async def member_size(
    endpoint: str, *, timeout: float = 5.0, tls: Identity | None = None
) -> MemberSize:
    try:
        async with _client(endpoint, timeout, tls) as client:
            return await _size(client, endpoint, timeout)
    except (aetcd.exceptions.ClientError, grpc.RpcError, OSError) as error:
        raise InfrastructureError(f"etcd member {endpoint}: no status ({error})") from error


async def defragment_members(
    endpoints: Sequence[str],
    *,
    min_free_bytes: int,
    min_free_ratio: float,
    timeout: float = 60.0,
    tls: Identity | None = None,
) -> list[Defragmented]:
    """Defragment, one after the other, the members worth it; what each one gave back.
    A member that cannot be reached is logged and skipped: the next round tries again."""
    done: list[Defragmented] = []
    for endpoint in endpoints:
        try:
            async with _client(endpoint, timeout, tls) as client:
                before = await _size(client, endpoint, timeout)
                if not worth_defragmenting(
                    before, min_free_bytes=min_free_bytes, min_free_ratio=min_free_ratio
                ):
                    continue
                await client.defragment()
                after = await _size(client, endpoint, timeout)
        except (aetcd.exceptions.ClientError, grpc.RpcError, OSError) as error:
            log.warning("etcd member %s not defragmented: %s", endpoint, error)
            continue
        log.info(
            "etcd member %s defragmented: %.1f MB -> %.1f MB",
            endpoint,
            before.db_size / 1e6,
            after.db_size / 1e6,
        )
        done.append(Defragmented(before, after))
    return done
