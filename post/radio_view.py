"""What the post knows of the radio: the downlink gate's latest airtime report.

A session of its own, subscribed to the gate's retained
`citypost/<city>/gate/airtime` (bridges/gate_status.py), QoS 0: a report
lost is replaced by the next one a few seconds later. Both posts keep one, so
either answers `PostAdmin.GetAirtime`.
"""

from __future__ import annotations

import logging
import threading
import uuid

import paho.mqtt.client as mqtt

from bridges.gate_status import GateAirtime, airtime_topic, parse_airtime
from bridges.mqtt_session import MqttSession
from citypost.config import Config
from citypost.errors import ConfigError, DecodeError
from security.identities import tls_identity
from security.pki import Kind

log = logging.getLogger(__name__)


class RadioView:
    def __init__(self, config: Config, post_name: str) -> None:
        if config.mqtt.port is None:
            raise ConfigError("mqtt.port must be resolved before the post starts")
        self._lock = threading.Lock()
        self._latest: GateAirtime | None = None
        self._session = MqttSession(
            client_id=f"citypost-{post_name}-radio-{uuid.uuid4().hex[:8]}",
            host=config.mqtt.host,
            port=config.mqtt.port,
            keepalive_s=config.mqtt.keepalive_s,
            subscriptions=[(airtime_topic(config.city.name), 0)],
            on_message=self._on_message,
            tls=tls_identity(config, Kind.POST, post_name),
        )

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        try:
            report = parse_airtime(bytes(message.payload))
        except DecodeError as error:
            log.warning("radio view: ignored a report: %s", error.message)
            return
        with self._lock:
            self._latest = report

    def latest(self) -> GateAirtime | None:
        with self._lock:
            return self._latest

    def start(self) -> None:
        self._session.start()

    def stop(self) -> None:
        self._session.stop(end_session=True)
