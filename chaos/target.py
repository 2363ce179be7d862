"""What a drill acts on: every operation the faults and the runner need.

`DrillTarget` is the posts' addresses and sessions, crash/freeze/thaw and
bringing a post back, etcd members, the broker, the devices' execution log.
The concrete targets (the drill's own system, a running system attached by
its manifest) live with the deployment, in cluster/drill_targets.py: chaos
knows what it breaks, not how the city is started.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import grpc

from citypost.config import Config
from citypost.errors import FailedPreconditionError
from console.session import TokenSource
from fleet.network_server import Execution
from fleet.population import City
from security import identities
from security.demo_accounts import demo_password
from security.grpc_tls import secure_channel_factory
from security.pki import Kind
from security.pki_store import Identity


class Link(Protocol):
    """A post's link to etcd the drill controls (chaos.link_proxy.LinkProxy)."""

    def partition(self) -> None: ...
    def degrade(self, latency_ms: int, loss: float) -> None: ...
    def heal(self) -> None: ...


class DrillTarget(ABC):
    config: Config
    city: City
    links: Mapping[str, Link]

    @property
    def endpoints(self) -> list[str]:
        return list(self.config.etcd.endpoints)

    @property
    def identity(self) -> Identity | None:
        """What the drill presents to etcd and the broker: the chaos tools' certificate
        (read-only everywhere), None in a city without TLS."""
        return identities.tls_identity(self.config, Kind.CHAOS, identities.CHAOS)

    def channel_factory(self) -> Callable[[str], grpc.Channel]:
        """gRPC channels to the posts, with the chaos tools' certificate (mutual TLS)."""
        if self.identity is None:
            return grpc.insecure_channel
        return secure_channel_factory(self.identity)

    def operator_tokens(self, user: str) -> TokenSource | None:
        """A demo operator's tokens, for the drill's operator load (None without TLS):
        operators' commands need an operator; the chaos certificate only reads."""
        if self.identity is None:
            return None
        password = demo_password(self.config.accounts_file, user)
        posts = list(self.addresses().values())
        return TokenSource.logged_in(self.channel_factory(), posts, user, password)

    @property
    def lease_ttl_s(self) -> float:
        return self.config.failover.lease_ttl_s

    @abstractmethod
    def addresses(self) -> dict[str, str]:
        """Post name -> gRPC address."""

    def address(self, post: str) -> str:
        return self.addresses()[post]

    @abstractmethod
    def session(self, post: str) -> int:
        """The post's session id (its Ray workers share it)."""

    @abstractmethod
    def crash_post(self, post: str) -> int: ...

    @abstractmethod
    def freeze_post(self, post: str) -> int: ...

    @abstractmethod
    def thaw_post(self, post: str) -> int: ...

    @abstractmethod
    def restore_post(self, post: str, timeout_s: float) -> None:
        """After a crash: the post runs and answers again."""

    @abstractmethod
    def etcd_member_count(self) -> int: ...

    @abstractmethod
    def raft_leader(self) -> int | None: ...

    @abstractmethod
    def take_etcd_members(self, indices: Sequence[int]) -> None: ...

    @abstractmethod
    def give_back_etcd_members(self, indices: Sequence[int], timeout_s: float) -> None: ...

    @abstractmethod
    def kill_broker(self) -> None: ...

    @abstractmethod
    def restore_broker(self, timeout_s: float) -> None: ...

    @abstractmethod
    def executions(self) -> Sequence[Execution]: ...

    @abstractmethod
    def start(self) -> None:
        """Begin collecting what needs a subscription (the execution log)."""

    @abstractmethod
    def close(self) -> None: ...

    def link(self, post: str) -> Link:
        if post not in self.links:
            raise FailedPreconditionError(
                f"post {post}'s etcd traffic does not pass through a link the drill controls; "
                "run this scenario on the drill's own system (without --against)"
            )
        return self.links[post]
