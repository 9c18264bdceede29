"""The host's MQTT connection: broker URL, TLS, credentials, connect with a timeout, retained reads.

Used by `edgegap publish`, `fleet` and `gc`. paho-mqtt 2.x with VERSION2 callbacks and MQTT 3.1.1,
like the agent. Secrets never come from argv: the password is read from a file named on the
command line or from EDGEGAP_MQTT_PASSWORD, the user name from the URL or EDGEGAP_MQTT_USERNAME.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.config.broker import DEFAULT_PASSWORD_ENV, parse_broker_url, password_from
from agent.errors import EdgegapError
from agent.mqtt import no_delay

logger = logging.getLogger(__name__)

USERNAME_ENV = "EDGEGAP_MQTT_USERNAME"
PASSWORD_ENV = DEFAULT_PASSWORD_ENV
MAX_PASSWORD_FILE_BYTES = 4096
WINDOW = 64  # QoS 1 messages in flight (sent, not yet acknowledged) at most


class BrokerError(EdgegapError, RuntimeError):
    """The broker cannot be reached, refuses us, or the URL or credentials are wrong."""


@dataclass(frozen=True)
class BrokerOptions:
    """How to reach the broker; every field but url is optional."""

    url: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    password_file: Path | None = None
    insecure: bool = False
    timeout_s: float = 5.0


def read_password(options: BrokerOptions) -> str | None:
    """The password from the password file (first line), else from EDGEGAP_MQTT_PASSWORD."""
    path = options.password_file
    try:
        return password_from(path, PASSWORD_ENV, MAX_PASSWORD_FILE_BYTES)
    except ValueError as exc:
        raise BrokerError(str(exc)) from exc
    except OSError as exc:
        raise BrokerError(f"cannot read the password file {path}: {exc.strerror}") from exc


def _client_id(role: str) -> str:
    return f"edgegap-{role}-{secrets.token_hex(4)}"


def make_client(
    options: BrokerOptions, role: str, session: str | None = None
) -> tuple[paho.Client, str, int]:
    """An unconnected paho client set up for the URL; returns it with the host and port. With a
    session name the client id is fixed and the session persistent: the broker keeps QoS 1
    messages for its subscriptions while it is away."""
    try:
        address = parse_broker_url(options.url)
    except ValueError as exc:
        raise BrokerError(str(exc)) from exc
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"edgegap-{role}-{session}" if session else _client_id(role),
        protocol=paho.MQTTv311,
        clean_session=session is None,
    )
    client.connect_timeout = options.timeout_s
    client.on_socket_open = no_delay  # PUBACKs and small messages are not held back by Nagle
    client.max_inflight_messages_set(WINDOW)
    username = address.username or os.environ.get(USERNAME_ENV) or None
    if username:
        client.username_pw_set(username, read_password(options))
    elif options.password_file is not None:
        raise BrokerError(f"a password file needs a user name: mqtt://user@host or {USERNAME_ENV}")
    if address.tls:
        try:
            client.tls_set(
                ca_certs=str(options.ca_file) if options.ca_file else None,
                certfile=str(options.cert_file) if options.cert_file else None,
                keyfile=str(options.key_file) if options.key_file else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise BrokerError(f"TLS setup failed: {exc}") from exc
        if options.insecure:
            client.tls_insecure_set(True)
    elif options.ca_file or options.cert_file or options.key_file:
        raise BrokerError("--ca, --cert and --key-file need an mqtts:// broker URL")
    return client, address.host, address.port


class Connection:
    """A connected client whose network loop runs on paho's thread; use as a context manager."""

    def __init__(self, options: BrokerOptions, role: str, session: str | None = None) -> None:
        self.options = options
        self.client, self.host, self.port = make_client(options, role, session)
        self._connected = threading.Event()
        self._answered = threading.Event()  # a CONNACK came, accepting or refusing
        self._refused: str | None = None
        self._messages: dict[str, bytes] = {}
        self._filter: str | None = None
        self._last = 0.0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._streams: list[tuple[str, Callable[[str, bytes], None]]] = []
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def __enter__(self) -> Connection:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self) -> None:
        """Connect within the timeout, or raise BrokerError with a one-line reason."""
        timeout = self.options.timeout_s
        try:
            self.client.connect(self.host, self.port, keepalive=max(10, int(timeout * 4)))
        except (ConnectionRefusedError, TimeoutError) as exc:
            raise BrokerError(f"broker {self.where} is unreachable: {_reason(exc)}") from exc
        except ssl.SSLError as exc:
            raise BrokerError(f"TLS handshake with {self.where} failed: {exc.reason}") from exc
        except OSError as exc:
            raise BrokerError(f"broker {self.where} is unreachable: {_reason(exc)}") from exc
        self.client.loop_start()
        self._answered.wait(timeout)
        if not self._connected.is_set():
            self.close()
            reason = self._refused or f"no answer within {timeout:g} s"
            raise BrokerError(f"broker {self.where} refused the connection: {reason}")

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            self._refused = str(rc)
        else:
            self._connected.set()
        self._answered.set()

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        for topic_filter, handler in self._streams:
            if not msg.retain and paho.topic_matches_sub(topic_filter, msg.topic):
                handler(msg.topic, bytes(msg.payload))
        # Only retained messages on the filter being read count (a broker may send others).
        with self._lock:
            if self._filter is None or not msg.retain:
                return
            if not paho.topic_matches_sub(self._filter, msg.topic):
                return
            self._last = time.monotonic()
            if msg.payload:
                self._messages[msg.topic] = bytes(msg.payload)
            else:
                self._messages.pop(msg.topic, None)

    def stream(self, topic_filter: str, handler: Callable[[str, bytes], None]) -> None:
        """Call handler(topic, payload) on paho's thread for each live (not retained) message."""
        self.listen(topic_filter, handler)
        self.subscribe(topic_filter)

    def listen(self, topic_filter: str, handler: Callable[[str, bytes], None]) -> None:
        """stream() without subscribing: called before connect(), a persistent session's
        messages queued by the broker, which arrive right after connecting, reach handler too."""
        self._streams.append((topic_filter, handler))

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK, at most the timeout."""
        self._subscribed.clear()
        result, _ = self.client.subscribe(topic_filter, qos=1)
        if result != paho.MQTT_ERR_SUCCESS or not self._subscribed.wait(self.options.timeout_s):
            raise BrokerError(
                f"broker {self.where} did not accept a subscription to {topic_filter}"
            )

    def read_retained(self, topic_filter: str, quiet_s: float = 0.3) -> dict[str, bytes]:
        """The retained messages on topic_filter: collected after the SUBACK until none came for
        quiet_s seconds (an exact topic returns as soon as its message is in), at most the timeout."""
        with self._lock:
            self._messages, self._filter, self._last = {}, topic_filter, time.monotonic()
        self.subscribe(topic_filter)
        exact = "+" not in topic_filter and "#" not in topic_filter
        deadline = time.monotonic() + self.options.timeout_s
        with self._lock:
            self._last = max(self._last, time.monotonic())
        while time.monotonic() < deadline:
            with self._lock:
                if exact and self._messages:
                    break
                if time.monotonic() - self._last >= quiet_s:
                    break
            time.sleep(0.01)
        self.client.unsubscribe(topic_filter)
        with self._lock:
            out, self._filter = dict(self._messages), None
        return out


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return exc.strerror or str(exc)
