"""A paho-mqtt 2.x client set up the way every citypost component needs it.

MQTT v5, a persistent session (queued QoS 1 messages survive our reconnects),
automatic reconnection with capped back-off, and a subscription list that is
re-sent on every connect, so a broker restart needs nothing from the caller.
With an identity, mutual TLS: the broker takes the certificate's CN as the user
name its ACL keys on (security.mqtt_acl), and a publish the ACL refuses comes
back as PUBACK reason 135 instead of vanishing (MQTT v5).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from citypost.errors import InfrastructureError
from security.pki_store import Identity

SESSION_EXPIRY_S = 3600


def tcp_no_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    # Small packets (acks, downlinks) go out at once instead of waiting for the
    # peer's delayed ACK (measured: up to 40 ms more per command round trip).
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def use_tls(client: mqtt.Client, identity: Identity) -> None:
    """Mutual TLS for a paho client: the city's CA only, our certificate as the user."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(identity.trust))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(identity.cert), str(identity.key))
    client.tls_set_context(context)


class MqttSession:
    def __init__(
        self,
        *,
        client_id: str,
        host: str,
        port: int,
        keepalive_s: int = 30,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        tls: Identity | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._keepalive = keepalive_s
        self._subscriptions = list(subscriptions)
        self._receive_maximum = receive_maximum
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self.connects = 0  # how many CONNACKs so far; a generation for ack bookkeeping
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
        if tls is not None:
            use_tls(self.client, tls)
        # A bug in a callback is logged by paho instead of ending its network thread.
        self.client.suppress_exceptions = True
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.max_queued_messages_set(0)  # paho queues while disconnected: unbounded
        self.client.max_inflight_messages_set(1000)
        self.client.on_socket_open = tcp_no_delay
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        if on_message is not None:
            self.client.on_message = lambda _c, _u, message: on_message(message)

    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            return
        self.connects += 1
        self._connected.set()
        if self._subscriptions and not flags.session_present:
            # A new session, or a broker restarted without persistence that forgot ours.
            client.subscribe(self._subscriptions)
        else:
            # The broker kept our session and its subscriptions. Waiting for a SUBACK
            # here would wait behind the whole backlog the broker queued for us.
            self._subscribed.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self._connected.clear()
        self._subscribed.clear()

    def _on_subscribe(
        self, _c: Any, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        if all(not r.is_failure for r in reasons):
            self._subscribed.set()

    def start(self, timeout: float = 10.0) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        if self._receive_maximum is not None:
            props.ReceiveMaximum = self._receive_maximum
        try:
            self.client.connect(
                self.host, self.port, self._keepalive, clean_start=False, properties=props
            )
        except OSError as exc:
            raise InfrastructureError(
                f"cannot reach the MQTT broker at {self.host}:{self.port}: {exc}"
            ) from exc
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise InfrastructureError(
                f"MQTT broker at {self.host}:{self.port} did not accept the session "
                f"within {timeout:.0f} s"
            )

    def wait_ready(self, timeout: float) -> bool:
        """True once connected and subscribed (again, after a reconnect)."""
        return self._subscribed.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, *, end_session: bool = False) -> None:
        """Disconnect; the broker keeps the session (and queues for it) unless end_session."""
        props = None
        if end_session:
            props = Properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
        self.client.disconnect(properties=props)
        self.client.loop_stop()
