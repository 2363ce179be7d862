"""Free TCP ports on 127.0.0.1 for local servers.

A port is chosen below the kernel's ephemeral range (`ip_local_port_range`) and
checked free by binding it. Ports the kernel hands out itself (bind to port 0,
and the local end of every outgoing connection: Ray, gRPC and etcd clients open
many) come from that range, so one chosen there could be taken by a connection
in the seconds before our server binds it; below it only another server can
take it. The process-local set keeps two callers in this process from getting
the same port.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

from citypost.errors import InfrastructureError, InvalidArgumentError

_LOOPBACK = "127.0.0.1"
# Attempts before giving up: most ports below the ephemeral range are free.
_MAX_ATTEMPTS = 64
# The lowest port handed out: above the well-known services a machine may run.
_LOWEST = 10_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")

_lock = threading.Lock()
_handed_out: set[int] = set()
_random = random.Random()


def ephemeral_low() -> int:
    """The lowest port the kernel picks by itself (Linux default 32768)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _probe(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_LOOPBACK, port))
        except OSError:
            return False
        return True


def _free_run(width: int) -> int:
    """The first of `width` adjacent ports, all free now and none handed out before."""
    highest = max(_LOWEST + 1_000, ephemeral_low()) - width
    with _lock:
        for _ in range(_MAX_ATTEMPTS):
            first = _random.randint(_LOWEST, highest)
            run = set(range(first, first + width))
            if not run & _handed_out and all(_probe(port) for port in run):
                _handed_out.update(run)
                return first
    raise InfrastructureError(
        f"no {width} adjacent free port(s) on {_LOOPBACK} after {_MAX_ATTEMPTS} attempts"
    )


def free_port() -> int:
    """Return a loopback port that is free now and not handed out before in this process."""
    return _free_run(1)


def free_port_pair() -> int:
    """Return a port p with p and p + 1 both free (a city's posts take grpc_port and the next)."""
    return _free_run(2)


def free_ports(n: int) -> list[int]:
    """Return `n` distinct free loopback ports."""
    if n < 0:
        raise InvalidArgumentError(f"free_ports needs n >= 0, got {n}")
    return [free_port() for _ in range(n)]


def port_is_bindable(host: str, port: int) -> bool:
    """True when nothing listens on host:port (a TIME_WAIT leftover does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers (mosquitto, gRPC) set SO_REUSEADDR too, so this is the test they face.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def hold_port(host: str, port: int) -> socket.socket:
    """Listen on `port` now, so nobody else takes it before its server does: a post's port
    is chosen before the post starts its Ray cluster, whose processes take free ports of
    their own (one once took a post's, which then could not serve). Listening, not just
    bound: on Linux others may bind a port bound with SO_REUSEADDR until it listens. Close
    it just before the server binds. InfrastructureError if the port is taken already."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As the servers do: a restarted post's port may still have connections in TIME_WAIT.
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind((host, port))
        holder.listen(1)
    except OSError as exc:
        holder.close()
        raise InfrastructureError(f"{host}:{port} is in use: {exc.strerror}") from exc
    return holder
