"""The project's etcd client: one aetcd client whose gRPC channel knows every member.

Used by the election, the replicated control state, the downlink gate's leader
watch and the drills' collectors; the local etcd launcher (cluster/etcd_local.py)
only starts members.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import aetcd

from citypost.errors import InvalidArgumentError


def grpc_target(endpoints: Sequence[str]) -> str:
    """One gRPC target naming every member: "ipv4:h1:p1,h2:p2,..." (or "ipv6:...").

    gRPC balances over a list of IP addresses only; one endpoint may be a host name.
    """
    if not endpoints:
        raise InvalidArgumentError("endpoints: at least one host:port is needed")
    if len(endpoints) == 1:
        return endpoints[0]
    families = set()
    for endpoint in endpoints:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not port.isdigit():
            raise InvalidArgumentError(f"endpoints: {endpoint!r} is not host:port")
        try:
            families.add(ipaddress.ip_address(host.strip("[]")).version)
        except ValueError:
            raise InvalidArgumentError(
                f"endpoints: {endpoint!r}: list members by IP address, gRPC cannot "
                "balance over several host names"
            ) from None
    if len(families) != 1:
        raise InvalidArgumentError("endpoints: mixing IPv4 and IPv6 members is not supported")
    return f"ipv{families.pop()}:" + ",".join(endpoints)


def etcd_client(endpoints: Sequence[str], *, timeout: float | None = 5.0) -> aetcd.Client:
    """An aetcd client whose channel knows every member.

    aetcd only takes one host and port and builds the target "host:port", so
    the host carries the gRPC multi-address target and the port its last port.
    gRPC then round-robins over the members that are up and drops a dead one;
    a call in flight when its member dies can still fail with UNAVAILABLE, so
    callers retry (tenacity).
    """
    target = grpc_target(endpoints)
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgumentError(f"endpoints: {target!r} is not host:port")
    options = {
        "grpc.lb_policy_name": "round_robin",
        # Reconnect to a restarted member quickly instead of backing off for seconds.
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 1000,
    }
    # aetcd hints timeout as int but hands it straight to gRPC, which takes float seconds.
    return aetcd.Client(host=host, port=int(port), timeout=timeout, options=options)
