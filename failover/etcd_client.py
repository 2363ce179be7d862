"""The project's etcd client: one aetcd client whose gRPC channel knows every member.

Used by the election, the replicated control state, the downlink gate's leader
watch and the drills' collectors; the local etcd launcher (cluster/etcd_local.py)
only starts members.

With an `Identity` the channel is mutual TLS: the client shows its certificate,
whose CN etcd takes as the user (its roles decide what it may touch), and checks
the member's certificate against the city's trust bundle. No password is ever
used: etcd's simple tokens expire and aetcd never authenticates again.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from typing import Any

import aetcd
import grpc
from aetcd import rpc, watcher

from citypost.errors import ConfigError, InvalidArgumentError
from security.pki_store import Identity


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


def _host(endpoint: str) -> str:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgumentError(f"endpoints: {endpoint!r} is not host:port")
    return host.strip("[]")


def tls_target_name(endpoints: Sequence[str]) -> str | None:
    """The name to check the members' certificates against, where gRPC's own is wrong.

    One endpoint: None, gRPC checks its host (a DNS or IP address SAN). Several: the
    target "ipv4:h1:p1,h2:p2" has the whole address list as its authority, which is
    what gRPC checks certificates against, and no certificate names it (grpcio 1.85:
    "Hostname Verification Check failed" on every member). One name serves every
    member, so it is their common host, taken from the endpoints the caller gave
    (loopback members: 127.0.0.1, which member certificates carry); the member must
    still show a certificate of the trusted CA for it. Members on different hosts
    have no common name to derive: refused rather than guessed.
    """
    if len(endpoints) <= 1:
        return None
    hosts = {_host(endpoint) for endpoint in endpoints}
    if len(hosts) != 1:
        raise InvalidArgumentError(
            f"endpoints: TLS to members on different hosts ({', '.join(sorted(hosts))}) "
            "needs one name that every member's certificate carries, and gRPC checks "
            "every member against the same name; list one endpoint by a name they all carry"
        )
    return hosts.pop()


class TlsClient(aetcd.Client):
    """An aetcd client on a mutual-TLS channel.

    aetcd 1.0.0 has no TLS: its `connect()` always opens an insecure channel. This
    overrides only `connect()`, a copy of aetcd's with `secure_channel` and without
    its password branch (never used here). Drop it when upstream adds TLS
    (martyanov/aetcd#37).
    """

    _is_connecting: bool  # aetcd's, set by its __init__

    def __init__(self, tls: Identity, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tls = tls

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            # Another task is establishing a connection, just wait
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            # Read at each connect: a client made after a rotation uses the new files.
            try:
                pem = self._tls.read()
            except OSError as exc:
                raise ConfigError(f"etcd client certificate: {exc}") from exc
            credentials = grpc.ssl_channel_credentials(pem.trust, pem.key, pem.cert)
            target = f"{self._host}:{self._port}"
            self.channel = rpc.secure_channel(target, credentials, options=self._options.items())
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


def etcd_client(
    endpoints: Sequence[str], *, timeout: float | None = 5.0, tls: Identity | None = None
) -> aetcd.Client:
    """An aetcd client whose channel knows every member; mutual TLS with `tls`.

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
    if tls is None:
        return aetcd.Client(host=host, port=int(port), timeout=timeout, options=options)
    target_name = tls_target_name(endpoints)
    if target_name is not None:
        options["grpc.ssl_target_name_override"] = target_name
    return TlsClient(tls, host=host, port=int(port), timeout=timeout, options=options)
