"""Free ports for local servers: below the kernel's ephemeral range, free, never twice."""

from __future__ import annotations

import socket

import pytest

from cluster.ports import ephemeral_low, free_port_pair, free_ports

pytestmark = pytest.mark.unit


def test_ports_are_free_distinct_and_below_the_range_outgoing_connections_use() -> None:
    ports = free_ports(50)
    assert len(set(ports)) == 50
    assert all(10_000 <= p < ephemeral_low() for p in ports)
    for port in ports[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))  # free when handed out
    with pytest.raises(Exception, match="n >= 0"):
        free_ports(-1)


def test_a_pair_is_two_adjacent_free_ports_below_the_range_and_never_handed_out_again() -> None:
    pairs = [free_port_pair() for _ in range(20)]
    taken = [p for first in pairs for p in (first, first + 1)]
    assert len(set(taken)) == 40
    assert all(10_000 <= p < ephemeral_low() for p in taken)
    assert not set(taken) & set(free_ports(50))
    for port in taken[:4]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))
