"""The MQTT link: retained status with a last will, detections, events, commands, and the
subscriptions the updater asks for (releases and chunk windows), renewed on every reconnect.

paho-mqtt 2.x, used as it intends: VERSION2 callbacks, connect_async + loop_start (so paho's
thread reconnects by itself), subscriptions made in on_connect, refused CONNACKs never counted
as connected. A broker outage never blocks or stops inference: while disconnected, detection
messages are dropped and counted rather than queued without bound.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig, parse_broker_url
from agent.outputs.messages import encode
from agent.updates.protocol import Topics

logger = logging.getLogger(__name__)

MAX_QUEUED = 100


def no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """paho's on_socket_open: turn Nagle's algorithm off. A pull sends a PUBACK, an UNSUBSCRIBE
    and a SUBSCRIBE per chunk, all small; with Nagle on, each waited for the broker's delayed
    ACK (~40 ms), and a 30 MB model took 1.3 s to pull on loopback instead of 0.1 s."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (a unix socket, a websocket wrapper)
        logger.debug("mqtt: TCP_NODELAY not set on %r", sock)


class MqttLink:
    """One device's connection to the broker."""

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        fleet: str,
        status: Callable[[], dict[str, Any]],
        on_command: Callable[[bytes], None] | None = None,
    ) -> None:
        assert config.broker, "MqttLink needs a broker URL"
        self.config = config
        self.address = parse_broker_url(config.broker)
        self.device_id = device_id
        self.topics = Topics.for_fleet(fleet, config.topic_prefix)
        self.status_topic = self.topics.device(device_id, "status")
        self.detections_topic = self.topics.device(device_id, "detections")
        self.cmd_topic = self.topics.device(device_id, "cmd")
        self.events_topic = self.topics.device(device_id, "events")
        self._status = status
        self._on_command = on_command
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self.published = 0
        self.dropped = 0
        self.connects = 0
        self._was_connected = False
        self._stopping = False  # a disconnect we asked for is not news
        self._subs: dict[str, int] = {}  # topic -> qos, renewed on every connect
        self.on_message: Callable[[str, bytes], None] | None = None  # every other topic
        self.client = self._make_client(fleet)

    def _make_client(self, fleet: str) -> paho.Client:
        cfg = self.config
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"edgegap-{self.device_id}",
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        client.on_socket_open = no_delay
        username = cfg.username or self.address.username
        if username:
            client.username_pw_set(username, cfg.read_password())
        if self.address.tls:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
            )
            if cfg.tls.insecure:
                client.tls_insecure_set(True)
        will = {
            "schema": "edgegap.status/1",
            "state": "offline",
            "reason": "lost",
            "device_id": self.device_id,
        }
        will.update({"fleet": fleet, "agent_version": _agent_version()})
        client.will_set(self.status_topic, encode(will), qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_queued_messages_set(MAX_QUEUED)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        a = self.address
        logger.info("mqtt: connecting to %s:%d%s", a.host, a.port, " (TLS)" if a.tls else "")
        self.client.connect_async(a.host, a.port, keepalive=self.config.keepalive_s)
        self.client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # ---- paho callbacks (paho's network thread) -----------------------------------------
    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code.is_failure:
            logger.warning("mqtt: broker refused the connection: %s", reason_code)
            self._connected.clear()
            return
        self.connects += 1
        logger.info("mqtt: connected%s", " again" if self._was_connected else "")
        self._was_connected = True
        with self._lock:
            topics = [(self.cmd_topic, 1), *self._subs.items()]
        client.subscribe(topics)
        client.publish(self.status_topic, encode(self._status()), qos=1, retain=True)
        self._connected.set()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if self._connected.is_set() and not self._stopping:
            logger.warning(
                "mqtt: disconnected (%s); detections are dropped until it is back", reason_code
            )
        self._connected.clear()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        """Hand the raw payload on; whoever receives it parses it (off this thread, ideally)."""
        if msg.topic == self.cmd_topic:
            if self._on_command is not None:
                self._on_command(bytes(msg.payload))
        elif self.on_message is not None:
            self.on_message(msg.topic, bytes(msg.payload))

    # ---- subscriptions (any thread) -----------------------------------------------------
    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again after every reconnect until unsubscribed."""
        with self._lock:
            self._subs[topic] = qos
        if self._connected.is_set():
            self.client.subscribe(topic, qos=qos)

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            known = self._subs.pop(topic, None) is not None
        if known and self._connected.is_set():
            self.client.unsubscribe(topic)

    # ---- publishing (any thread) --------------------------------------------------------
    def publish_detections(self, payload: bytes) -> bool:
        """Publish one detections message; False (and counted as dropped) when not connected."""
        if not self._connected.is_set():
            self.dropped += 1
            return False
        info = self.client.publish(self.detections_topic, payload, qos=self.config.qos)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self.dropped += 1
            return False
        self.published += 1
        return True

    def publish_status(self, status: dict[str, Any] | None = None) -> None:
        if self._connected.is_set():
            self.client.publish(
                self.status_topic, encode(status or self._status()), qos=1, retain=True
            )

    def publish_event(self, event: dict[str, Any]) -> None:
        """QoS 1: while disconnected, paho queues it (up to MAX_QUEUED) and sends it on reconnect."""
        info = self.client.publish(self.events_topic, encode(event), qos=1)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            logger.warning("mqtt: event %s not queued (%s)", event.get("event"), info.rc)

    def stop(self, final_status: dict[str, Any] | None, timeout: float = 3.0) -> None:
        """Publish the final (offline) status retained, wait for it to leave, then disconnect."""
        try:
            if final_status is not None and self._connected.is_set():
                info = self.client.publish(
                    self.status_topic, encode(final_status), qos=1, retain=True
                )
                info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            logger.warning("mqtt: final status not delivered: %s", exc)
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()
        self._connected.clear()


def _agent_version() -> str:
    from agent import __version__

    return __version__
