"""A held port cannot be taken, even by a server that sets SO_REUSEADDR, until released."""

from __future__ import annotations

import socket

import pytest

from citypost.errors import InfrastructureError
from cluster.ports import free_port, hold_port, port_is_bindable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def test_a_held_port_is_nobody_elses_until_released() -> None:
    port = free_port()
    held = hold_port("127.0.0.1", port)
    try:
        assert not port_is_bindable("127.0.0.1", port)  # as a server would try it
        with pytest.raises(InfrastructureError, match=f"127.0.0.1:{port} is in use"):
            hold_port("127.0.0.1", port)
    finally:
        held.close()
    with socket.socket() as server:  # released: the real server takes it
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
