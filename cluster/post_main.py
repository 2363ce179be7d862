"""`citypost post`: one control post as a process, with its own Ray cluster.

Expects the broker, and etcd when `etcd.endpoints` names it, to be reachable;
starts a Ray head of its own, the actors, the post and its gRPC services.
With etcd the control state lives there and the post campaigns for
leadership once everything is up (a post still starting never leads);
without etcd it runs alone with its control state in memory. Runs until
SIGTERM or Ctrl-C; stops what it started, in reverse (resigning first, so a
standby takes over in milliseconds instead of a lease TTL).

With `security.tls` the post listens twice: the operators' port (mutual TLS, the
authorizer) and the citizen listener on `post.citizen_port` (CitizenService only,
server-only TLS with the post's certificate, an app credential, api.citizen_guard).
Without it, one plaintext port serves everything, the citizens' service included
(the benchmarks' baseline). Where the citizen service answers is written beside
the ready file (cluster.post_process.citizen_file).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import grpc

from actors import ray_api
from actors.ray_pool import RayActorPool
from api.admin import admin_service
from api.auth import auth_service
from api.authorization import Audit
from api.citizen import (
    CitizenService,
    RecentReports,
    citizen_service,
    default_report_limiter,
)
from api.citizen_guard import CitizenGuard, RefusalAudit, ReportLimits
from api.guard import build_guard
from api.operator import operator_service
from api.server import Service, start_server
from citypost.clock import SimClock
from citypost.config import Config
from citypost.errors import ConfigError
from citypost.observability import setup_observability
from cluster.ports import free_port, hold_port
from cluster.post_process import citizen_file, phase_file, ray_temp_file, write_whole
from cluster.ray_local import LocalRay
from failover.control_state import ControlState
from failover.election import Election
from failover.etcd_control_state import EtcdControlState
from failover.revoked_sessions import EtcdRevocations, SessionRevocations
from failover.roles import Leadership, SoleLeadership
from fleet.population import build_city
from post.audit_file import AuditFile
from post.post import Post, wall_ms
from security.apps import AppBook, apps_path
from security.grpc_tls import server_credentials, server_only_credentials
from security.identities import tls_identity
from security.pki import Kind
from security.pki_store import Identity
from security.tokens import DEFAULT_LEEWAY_S

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listeners:
    """The post's gRPC servers: the operators' port, and the citizens' with TLS."""

    operators: grpc.aio.Server
    citizens: grpc.aio.Server | None
    address: str
    citizen_address: str  # where CitizenService answers: `address` without TLS

    async def stop(self) -> None:
        for server in (self.citizens, self.operators):
            if server is not None:
                await server.stop(None)


async def start_listeners(
    config: Config,
    services: Sequence[Service],
    citizen: CitizenService,
    post_tls: Identity | None,
    *,
    audit: Audit,
    refusals: RefusalAudit,
    port: int,
    citizen_port: int | None,
    sessions: SessionRevocations | None = None,
) -> Listeners:
    """The operators' port with `services` (and AuthService with TLS) and, with TLS, the
    citizen listener on `citizen_port`; without TLS the citizens share the one port."""
    host = config.post.grpc_host
    served = list(services)
    # Who may call what: only where callers can be known (mutual TLS).
    guard = None if post_tls is None else build_guard(config, post_tls, audit, sessions=sessions)
    if guard is not None:
        served.append(auth_service(guard.auth))
    else:
        served.append(citizen_service(citizen))
    server, _ = await start_server(
        served,
        host=host,
        port=port,
        deadline_s=config.post.rpc_deadline_s,
        credentials=None if post_tls is None else server_credentials(post_tls),
        authorizer=None if guard is None else guard.authorizer,
    )
    address = f"{host}:{port}"
    if post_tls is None:
        return Listeners(server, None, address, address)
    if citizen_port is None:
        await server.stop(None)
        raise ConfigError("post.citizen_port: a post with TLS needs its citizen listener's port")
    try:
        citizens, _ = await start_server(
            [citizen_service(citizen)],
            host=host,
            port=citizen_port,
            deadline_s=config.post.rpc_deadline_s,
            credentials=server_only_credentials(post_tls),
            authorizer=CitizenGuard(AppBook(apps_path(config)), refusals=refusals),
        )
    except BaseException:
        await server.stop(None)
        raise
    return Listeners(server, citizens, address, f"{host}:{citizen_port}")


async def run_post(config: Config, *, ready_file: Path | None = None) -> int:
    if config.mqtt.port is None:
        raise ConfigError("mqtt.port: a post needs the broker's address (mqtt.host, mqtt.port)")
    name = config.post.name
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = config.run_dir.resolve() / f"post-{name}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    # The registry comes from the city model until a provisioning source replaces it.
    registry = build_city(config.city).registry
    clock = SimClock.of(config.sim)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def phase(text: str) -> None:
        if ready_file is not None:
            write_whole(phase_file(ready_file), text)

    port = config.post.grpc_port or free_port()
    held = hold_port(config.post.grpc_host, port)  # until the server binds it
    # The citizen listener exists only with TLS: without, the citizens share the one port.
    citizen_port = (config.post.citizen_port or free_port()) if config.security.tls else None
    held_citizen = None if citizen_port is None else hold_port(config.post.grpc_host, citizen_port)
    async with AsyncExitStack() as stack:
        stack.callback(held.close)
        if held_citizen is not None:
            stack.callback(held_citizen.close)
        phase("starting its Ray cluster")
        ray_head = LocalRay(
            run_dir / "ray",
            name=name,
            object_store_mb=config.post.ray_object_store_mb,
            in_caller_group=True,
        )
        await asyncio.to_thread(ray_head.start)
        stack.push_async_callback(asyncio.to_thread, ray_head.stop)
        if ready_file is not None:
            # Where whoever runs this post cleans up after a crash (SIGKILL skips ours).
            ray_temp_file(ready_file).write_text(str(ray_head.temp_dir))
        ray_api.connect(ray_head.address, namespace=name, env=ray_head.env_for_driver())
        stack.push_async_callback(asyncio.to_thread, ray_api.disconnect)
        groups = registry.groups()
        phase(f"starting the actors of {len(groups)} groups")
        pool = await asyncio.to_thread(
            partial(
                RayActorPool.spawn,
                groups,
                hosts=config.post.actor_hosts,
                alarms=config.alarms,
            )
        )
        observability = setup_observability(config.observability, post=name)
        stack.callback(observability.shutdown)
        address = f"{config.post.grpc_host}:{port}"
        endpoints = list(config.etcd.endpoints)
        # One certificate for everything the post reaches and serves: etcd, the broker
        # (its edge), and its gRPC port (mutual TLS).
        post_tls = tls_identity(config, Kind.POST, name)
        election: Election | None = None
        state: ControlState | None = None
        sessions: SessionRevocations | None = None  # None: in this process's memory
        leadership: Leadership
        if endpoints:
            etcd_state = EtcdControlState.from_endpoints(endpoints, config.city.name, tls=post_tls)
            stack.push_async_callback(etcd_state.close)
            state = etcd_state
            # Ended sessions, held at both posts (read before the post serves).
            revocations = EtcdRevocations.from_endpoints(
                endpoints,
                config.city.name,
                keep_s=config.security.refresh_token_s + DEFAULT_LEEWAY_S,
                tls=post_tls,
            )
            stack.push_async_callback(revocations.close)
            await revocations.start()
            sessions = revocations
            election = Election(
                endpoints,
                city=config.city.name,
                name=name,
                address=address,
                config=config.failover,
                tls=post_tls,
            )
            leadership = election
        else:
            leadership = SoleLeadership(name, address)
        audit_file = AuditFile(
            config.run_dir.resolve() / f"audit-{name}.jsonl",
            signer=None if post_tls is None else post_tls.read(),
        )
        stack.callback(audit_file.close)
        post = Post(
            config,
            name=name,
            registry=registry,
            pool=pool,
            clock=clock,
            observability=observability,
            state=state,
            leadership=leadership,
            audit_file=audit_file,
        )
        phase(f"waiting for {len(pool.hosts())} actor processes, reading the control state")
        await post.start()
        stack.push_async_callback(post.stop)
        refusals = RefusalAudit(audit_file.append)
        citizen = CitizenService(
            post.dispatcher,
            post.registry,
            post.latest.latest,
            state=post.state,
            limiter=default_report_limiter(),
            wall_ms=wall_ms,
            limits=ReportLimits(),
            duplicates=RecentReports(),
            refusals=refusals,
            audit=audit_file.append,
        )
        services = [
            admin_service(post),
            operator_service(
                post.dispatcher,
                post.state,
                post.registry,
                post.latest,
                post.board,
                wall_ms=wall_ms,
                approval=config.security.approval,
                audit_failure=lambda: audit_file.failure,
                shelve_limits=config.alarms.shelve_max_minutes,
            ),
        ]
        held.close()
        if held_citizen is not None:
            held_citizen.close()
        listeners = await start_listeners(
            config,
            services,
            citizen,
            post_tls,
            audit=audit_file.append,
            refusals=refusals,
            port=port,
            citizen_port=citizen_port,
            sessions=sessions,
        )
        stack.push_async_callback(listeners.stop)
        citizen_address = listeners.citizen_address
        if election is not None:
            # Last: campaign only once actors, state and API are up. Closed first on
            # the way out: resigning hands over before anything else stops.
            phase("joining the election")
            await election.start()
            stack.push_async_callback(election.close)
        role = "campaigning" if election is not None else "leading alone"
        print(
            f"citypost post {name}: {role}, gRPC on {address}, citizens on "
            f"{citizen_address}, {len(registry):,} devices",
            flush=True,
        )
        if ready_file is not None:
            # First: a post seen ready has both addresses written.
            write_whole(citizen_file(ready_file), citizen_address)
            write_whole(ready_file, address)
        await stop.wait()
        print(f"citypost post {name}: stopping", flush=True)
    return 0
