"""A local etcd cluster (1, 3, ... members) on free 127.0.0.1 ports, for the demo and tests.

Members run Debian's etcd 3.4 with short Raft timings (50 ms heartbeat, 500 ms
election) so that 1 s leases work. Member i logs to run_dir/etcd-<i>.log and
keeps its data in run_dir/etcd-<i>.data.

With an `EtcdSecurity`, clients and peers speak mutual TLS with certificates of
the city's PKI (member i is the principal `etcd.etcd-<i>`), revoked certificates
are refused (etcd reads the CRL at each new connection), and etcd's RBAC is on:
the users and roles of `security.etcd_access`, each user authenticated by its
certificate's CN. Without one, members speak plain HTTP with no auth, as before.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import signal
import ssl
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import aetcd

from citypost.errors import ConfigError, InfrastructureError, InvalidArgumentError
from cluster.ports import free_ports
from cluster.processes import ManagedProcess, find_binary
from failover.etcd_client import etcd_client
from security.etcd_access import ROOT, EtcdAccess, etcd_access
from security.files import replace_file
from security.pki import Kind, Principal
from security.pki_store import Identity, PkiStore

LOOPBACK = "127.0.0.1"
MAX_MEMBERS = 7
# Architectures etcd 3.4 supports without ETCD_UNSUPPORTED_ARCH (uname -m spelling).
_SUPPORTED_MACHINES = {"x86_64", "amd64", "aarch64", "arm64", "ppc64le"}
_GO_ARCH = {"armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386"}
ETCDCTL_TIMEOUT_S = 15.0
# What etcd answers a certificate whose CN is no user (or no root) once auth is on.
_AUTH_IS_ON = ("user name not found", "permission denied")


@dataclass(frozen=True)
class EtcdSecurity:
    """Mutual TLS and RBAC for a local cluster: the city's PKI and who gets a user.

    `principals` None: every principal the store has issued when the cluster first
    starts. Kinds without an etcd role (security.etcd_access) get no user. The
    access rules are applied once, on the first start (auth is then on); later
    changes are made by hand as root, whose password is in the run dir.
    """

    store: PkiStore
    principals: tuple[Principal, ...] | None = None
    posts_defragment: bool = True

    def __post_init__(self) -> None:
        for principal in self.principals or ():
            if principal.city != self.city:
                raise ConfigError(
                    f"etcd security: {principal.common_name} belongs to city "
                    f"{principal.city!r}, the PKI to {self.city!r}"
                )

    @property
    def city(self) -> str:
        return self.store.city

    def granted(self) -> tuple[Principal, ...]:
        if self.principals is not None:
            return self.principals
        return tuple(self.store.principals())

    def access(self) -> EtcdAccess:
        return etcd_access(self.city, self.granted(), posts_defragment=self.posts_defragment)

    def member_principal(self, index: int) -> Principal:
        return Principal(self.city, Kind.ETCD, f"etcd-{index}")


@dataclass(frozen=True)
class EtcdMember:
    """Where one member listens and keeps its files."""

    index: int
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    scheme: str = "http"  # https with TLS

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.peer_port}"


def _tls_context(tls: Identity | None) -> ssl.SSLContext | None:
    """A client context checking the member against the city's trust and showing `tls`'s
    certificate (etcd with --client-cert-auth asks one of every HTTPS client too)."""
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=str(tls.trust))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    return context


def member_is_healthy(
    client_url: str, timeout: float = 1.0, *, tls: Identity | None = None
) -> bool:
    """True when the member answers /health with {"health": "true"}.

    etcd 3.4 answers "true" only when the member sees a leader and a quorum
    read succeeds, so this also proves the cluster has a leader. An https URL
    needs `tls`: /health takes any certificate of the CA, an etcd user or not.
    """
    try:
        context = _tls_context(tls)
        with urllib.request.urlopen(
            f"{client_url}/health", timeout=timeout, context=context
        ) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError):
        # OSError covers refused connections, timeouts, HTTP 503 (HTTPError) and TLS errors.
        return False
    return isinstance(body, dict) and body.get("health") == "true"


def raft_leader_of(
    client_urls: Mapping[int, str], timeout: float = 2.0, *, tls: Identity | None = None
) -> int | None:
    """Which member (by index) says in its /metrics that it is etcd's Raft leader (https
    URLs need `tls`, any certificate of the CA)."""
    context = _tls_context(tls)
    for index, url in client_urls.items():
        try:
            with urllib.request.urlopen(f"{url}/metrics", timeout=timeout, context=context) as r:
                text = r.read().decode()
        except OSError:
            continue
        if "\netcd_server_is_leader 1" in text:
            return index
    return None


def _etcdctl_binary() -> str:
    try:
        return find_binary("etcdctl")
    except InfrastructureError:
        raise InfrastructureError(
            "etcdctl not found: install etcd-client (apt-get install etcd-client)"
        ) from None


def _etcd_env() -> dict[str, str]:
    # etcd reads every ETCD_* variable as a flag; a stray one must not change our cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    machine = platform.machine().lower()
    if machine not in _SUPPORTED_MACHINES:
        env["ETCD_UNSUPPORTED_ARCH"] = _GO_ARCH.get(machine, machine)
    return env


AUTO_COMPACTION_RETENTION = "10m"


class LocalEtcd:
    """An etcd cluster of `members` local processes (an odd number, 1 to 7).

    Ports are chosen at construction and kept for the object's life, so a
    restarted member comes back where the clients expect it.

    With `security` (see `EtcdSecurity`), the health and leader probes use the
    members' own certificates (`etcd.etcd-<i>`): they are no etcd users, so they
    reach /health and /metrics and nothing in the keyspace. `client()` connects
    as a post (role post: reads and writes the city's prefix).
    """

    def __init__(
        self,
        run_dir: Path,
        members: int = 1,
        heartbeat_interval_ms: int = 50,
        election_timeout_ms: int = 500,
        cluster_token: str | None = None,
        *,
        start_timeout_s: float = 30.0,
        security: EtcdSecurity | None = None,
    ) -> None:
        if not 1 <= members <= MAX_MEMBERS or members % 2 == 0:
            raise ConfigError(f"members must be odd and 1..{MAX_MEMBERS}, got {members}")
        if heartbeat_interval_ms < 1:
            raise ConfigError(f"heartbeat_interval_ms must be >= 1, got {heartbeat_interval_ms}")
        # etcd refuses to start otherwise.
        if election_timeout_ms < 5 * heartbeat_interval_ms:
            raise ConfigError(
                f"election_timeout_ms ({election_timeout_ms}) must be at least 5 x "
                f"heartbeat_interval_ms ({heartbeat_interval_ms})"
            )
        self.run_dir = Path(run_dir)
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.election_timeout_ms = election_timeout_ms
        # A unique token keeps two local clusters from ever joining each other.
        self.cluster_token = cluster_token or f"citypost-{uuid.uuid4().hex[:12]}"
        self.start_timeout_s = start_timeout_s
        self.security = security
        # etcd's root user's password, set when auth is first enabled, for an administrator
        # only: the project's clients authenticate by certificate and never by password.
        self.root_password_file = self.run_dir / "root.password"
        ports = free_ports(2 * members)
        self.members: tuple[EtcdMember, ...] = tuple(
            EtcdMember(
                index=i,
                name=f"m{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.run_dir / f"etcd-{i}.data",
                log_path=self.run_dir / f"etcd-{i}.log",
                scheme="http" if security is None else "https",
            )
            for i in range(members)
        )
        self._processes: list[ManagedProcess | None] = [None] * members
        self._member_tls: list[Identity | None] = [None] * members
        self._lock = threading.RLock()

    @property
    def member_count(self) -> int:
        return len(self.members)

    @property
    def endpoints(self) -> list[str]:
        """Every member as "127.0.0.1:port", the form clients take."""
        return [m.endpoint for m in self.members]

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def pids(self) -> list[int | None]:
        """PID of each member's current (or last) process; None if never started."""
        return [p.pid if p is not None else None for p in self._processes]

    def process(self, i: int) -> ManagedProcess | None:
        return self._processes[self._check_index(i)]

    def member_alive(self, i: int) -> bool:
        proc = self._processes[self._check_index(i)]
        return proc is not None and proc.alive

    def member_healthy(self, i: int) -> bool:
        member = self.members[self._check_index(i)]
        return member_is_healthy(member.client_url, tls=self.member_identity(i))

    def raft_leader(self) -> int | None:
        """The index of the member that is etcd's Raft leader (its /metrics say so), if any."""
        alive = {m.index: m.client_url for m in self.members if self.member_alive(m.index)}
        # Any member's certificate is a client certificate of the CA: the first one.
        return raft_leader_of(alive, tls=self.member_identity(0))

    def member_identity(self, i: int) -> Identity | None:
        """Member i's certificate files (None without security), issued if it has none."""
        if self.security is None:
            return None
        found = self._member_tls[self._check_index(i)]
        if found is None:
            found = self.security.store.ensure(self.security.member_principal(i))
            self._member_tls[i] = found
        return found

    def wait_all_healthy(self, timeout_s: float) -> None:
        """Until every member answers /health with a leader; InfrastructureError after."""
        deadline = time.monotonic() + timeout_s
        while not all(self.member_healthy(m.index) for m in self.members):
            if time.monotonic() >= deadline:
                raise InfrastructureError(f"etcd not healthy on every member within {timeout_s} s")
            time.sleep(0.1)

    def client(
        self, *, timeout: float | None = 5.0, principal: Principal | None = None
    ) -> aetcd.Client:
        """An aetcd client that knows every member (see `etcd_client`).

        With security it connects as `principal` (its certificate issued if it has
        none), by default the first post among the granted principals: a post reads
        and writes the city's prefix. ConfigError if none is a post.
        """
        if self.security is None:
            return etcd_client(self.endpoints, timeout=timeout)
        if principal is None:
            posts = [p for p in self.security.granted() if p.kind is Kind.POST]
            if not posts:
                raise ConfigError(
                    "etcd security: no post among the granted principals to connect as; "
                    "name a principal"
                )
            principal = posts[0]
        tls = self.security.store.ensure(principal)
        return etcd_client(self.endpoints, timeout=timeout, tls=tls)

    def start(self) -> LocalEtcd:
        """Start every member and wait until each answers /health with a leader."""
        with self._lock:
            if any(p is not None and p.alive for p in self._processes):
                raise InfrastructureError("this etcd cluster is already started; stop it first")
            binary = find_binary("etcd")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                # All members first: none can elect a leader before a quorum runs.
                for m in self.members:
                    self._launch(binary, m, "new")
                for m in self.members:
                    self._wait_healthy(m.index)
                if self.security is not None:
                    self._enable_auth(self.security)
            except BaseException:
                self.stop()
                raise
            return self

    def kill_member(self, i: int, sig: int = signal.SIGKILL, *, wait: bool | None = None) -> None:
        """Send `sig` to member i; by default wait for the exit only after SIGKILL.

        The killed process stays a zombie until `stop_member`, `restart_member` or `stop`.
        """
        with self._lock:
            proc = self._running(i)
            proc.kill(sig)
            if (sig == signal.SIGKILL if wait is None else wait) and not proc.wait_exit(10.0):
                raise InfrastructureError(
                    f"etcd member {i} (pid {proc.pid}) did not exit after {sig}"
                )

    def stop_member(self, i: int, timeout: float = 10.0) -> None:
        """Stop member i gracefully (SIGTERM, then SIGKILL) and reap it."""
        with self._lock:
            proc = self._processes[self._check_index(i)]
            if proc is not None:
                proc.stop(timeout)

    def restart_member(self, i: int, *, wait_healthy: bool = True) -> None:
        """Start member i again on its ports and data dir; it rejoins the cluster."""
        with self._lock:
            self._check_index(i)
            self.stop_member(i)
            self._launch(find_binary("etcd"), self.members[i], "existing")
            if wait_healthy:
                self._wait_healthy(i)

    def stop(self, grace_s: float | None = None) -> None:
        """Stop every member, one after the other; safe to call twice or after a failed start.

        One at a time is the fast way: a stopping leader hands over to a live
        follower in milliseconds, and the last one has no peer left to try.
        SIGTERM to all at once makes a leader wait about 5 s for peers that are
        leaving, so each member gets SIGKILL after `grace_s` (default: 4 election
        timeouts, at least 1 s); that loses nothing, as etcd fsyncs its WAL.
        """
        with self._lock:
            if grace_s is None:
                grace_s = max(1.0, 4 * self.election_timeout_ms / 1000)
            errors: list[InfrastructureError] = []
            for proc in self._processes:
                if proc is None:
                    continue
                try:
                    proc.stop(grace_s)
                except InfrastructureError as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]

    def __enter__(self) -> LocalEtcd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _argv(self, binary: str, m: EtcdMember, state: str) -> list[str]:
        initial_cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        return [
            binary,
            f"--name={m.name}",
            f"--data-dir={m.data_dir}",
            f"--listen-client-urls={m.client_url}",
            f"--advertise-client-urls={m.client_url}",
            f"--listen-peer-urls={m.peer_url}",
            f"--initial-advertise-peer-urls={m.peer_url}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-token={self.cluster_token}",
            f"--initial-cluster-state={state}",
            f"--heartbeat-interval={self.heartbeat_interval_ms}",
            f"--election-timeout={self.election_timeout_ms}",
            "--enable-v2=false",
            # Every write of the control state is a new revision, and etcd keeps them all
            # until compacted: its database would grow with the city's every command and
            # alarm until the quota (2 GiB) refuses all writes. Ten minutes of history is
            # what a post's watch needs; a post further behind reloads.
            "--auto-compaction-mode=periodic",
            f"--auto-compaction-retention={AUTO_COMPACTION_RETENTION}",
            "--logger=zap",
            "--log-outputs=stderr",
            *self._tls_argv(m),
        ]

    def _tls_argv(self, m: EtcdMember) -> list[str]:
        if self.security is None:
            return []
        # At each launch: `ensure` renews a certificate near its end.
        tls = self.security.store.ensure(self.security.member_principal(m.index))
        self._member_tls[m.index] = tls
        # The member's certificate serves clients and peers and authenticates it to its
        # peers (it carries 127.0.0.1, which etcd checks against a peer's address). Any
        # certificate of the CA passes the peer check: etcd 3.4 can require one CN only
        # (--peer-cert-allowed-cn), and each member has its own.
        return [
            f"--cert-file={tls.cert}",
            f"--key-file={tls.key}",
            f"--trusted-ca-file={tls.trust}",
            "--client-cert-auth",
            f"--client-crl-file={tls.crl}",
            f"--peer-cert-file={tls.cert}",
            f"--peer-key-file={tls.key}",
            f"--peer-trusted-ca-file={tls.trust}",
            "--peer-client-cert-auth",
            f"--peer-crl-file={tls.crl}",
        ]

    # --- RBAC ------------------------------------------------------------------------------

    def _enable_auth(self, security: EtcdSecurity) -> None:
        """Create the users and roles, root with a fresh password, then `auth enable`.

        Runs while auth is off, so the member's certificate (no etcd user) may do it; on
        a cluster whose auth is already on (a restart on existing data) it does
        nothing. Every step may be run again, so a set-up cut short is finished by the
        next start. etcd refuses `auth enable` without a user `root` with role root.
        """
        tls = security.store.ensure(security.member_principal(0))
        try:
            users = set(self._etcdctl(tls, "user", "list").split())
        except InfrastructureError as exc:
            if any(sign in exc.message for sign in _AUTH_IS_ON):
                return  # auth is on: the set-up was done
            raise
        roles = set(self._etcdctl(tls, "role", "list").split())
        access = security.access()
        for role in access.roles:
            if role.name not in roles:
                self._etcdctl(tls, "role", "add", role.name)
            for grant in role.grants:
                prefix = ["--prefix"] if grant.prefix else []
                self._etcdctl(
                    tls, "role", "grant-permission", *prefix, role.name, grant.access, grant.key
                )
        for user in access.users:
            if user.name not in users:
                self._etcdctl(tls, "user", "add", "--no-password", user.name)
            for name in user.roles:
                self._etcdctl(tls, "user", "grant-role", user.name, name)
        password = secrets.token_urlsafe(32)
        replace_file(self.root_password_file, password + "\n")
        # The password goes by stdin, never on a command line (ps shows those).
        if ROOT in users:
            self._etcdctl(tls, "user", "passwd", ROOT, "--interactive=false", stdin=password)
        else:
            self._etcdctl(tls, "user", "add", ROOT, "--interactive=false", stdin=password)
        self._etcdctl(tls, "user", "grant-role", ROOT, ROOT)
        self._etcdctl(tls, "auth", "enable")

    def _etcdctl(self, tls: Identity, *args: str, stdin: str | None = None) -> str:
        argv = [
            _etcdctl_binary(),
            f"--endpoints={','.join(self.endpoints)}",
            f"--cacert={tls.trust}",
            f"--cert={tls.cert}",
            f"--key={tls.key}",
            *args,
        ]
        # etcdctl reads every ETCDCTL_* variable as a flag (a stray user or password too).
        env = {k: v for k, v in _etcd_env().items() if not k.startswith("ETCDCTL_")}
        try:
            done = subprocess.run(
                argv,
                input=None if stdin is None else stdin + "\n",
                capture_output=True,
                text=True,
                env=env,
                timeout=ETCDCTL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise InfrastructureError(
                f"etcdctl {' '.join(args)}: no answer within {ETCDCTL_TIMEOUT_S} s"
            ) from None
        if done.returncode != 0:
            error = done.stderr.strip().splitlines()
            raise InfrastructureError(
                f"etcdctl {' '.join(args)} failed: {error[-1] if error else done.returncode}"
            )
        return done.stdout

    def _launch(self, binary: str, m: EtcdMember, state: str) -> None:
        proc = ManagedProcess(
            f"etcd member {m.index} ({m.name})",
            self._argv(binary, m, state),
            m.log_path,
            env=_etcd_env(),
            cwd=self.run_dir,
        )
        self._processes[m.index] = proc
        proc.start()

    def _wait_healthy(self, i: int) -> None:
        proc = self._running(i)
        url = self.members[i].client_url
        tls = self.member_identity(i)
        proc.wait_ready(lambda: member_is_healthy(url, tls=tls), self.start_timeout_s)

    def _running(self, i: int) -> ManagedProcess:
        proc = self._processes[self._check_index(i)]
        if proc is None or not proc.alive:
            raise InfrastructureError(f"etcd member {i} is not running")
        return proc

    def _check_index(self, i: int) -> int:
        if not 0 <= i < len(self.members):
            raise InvalidArgumentError(f"member index must be 0..{len(self.members) - 1}, got {i}")
        return i
