"""An embedded MQTT broker for a lab or a demo (`edgegap broker`), built on amqtt 0.12.

amqtt 0.12.1 sends retained messages a client never subscribed to: whenever any client connects,
it walks every subscription filter of every client and sends the connecting client the retained
messages that match them (at QoS 0). A device that has just connected would then receive model
chunks that another device is downloading. `_Broker` below sends retained messages only for the
filters the receiving client itself holds, which is what MQTT 3.1.1 asks (section 3.3.1.3).
Retained delivery to a subscriber that subscribes after the publish works (tests/test_embedded_broker.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from agent.errors import EdgegapError

logger = logging.getLogger(__name__)


class EmbeddedBrokerError(EdgegapError, RuntimeError):
    """amqtt is missing, or the broker could not start."""


def _broker_class() -> type[Any]:
    try:
        from amqtt.broker import Broker
    except ModuleNotFoundError as exc:
        raise EmbeddedBrokerError(
            "`edgegap broker` needs amqtt: pip install 'edgegap[host]' (or pip install 'amqtt>=0.12,<0.13')"
        ) from exc

    class _Broker(Broker):  # type: ignore[misc, valid-type]
        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            holders = self._subscriptions.get(subscription[0], [])
            if any(s.client_id == session.client_id for s, _ in holders):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    return _Broker


def broker_config(host: str, port: int) -> dict[str, Any]:
    """Anonymous clients, one TCP listener, no $SYS topics."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


class EmbeddedBroker:
    """An amqtt broker on its own thread and event loop; start() returns once it listens."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host, self.port = host, port
        self._cls = _broker_class()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="edgegap-broker", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise EmbeddedBrokerError(
                f"broker did not start on {self.host}:{self.port} in {timeout:g} s"
            )
        if self._error is not None:
            raise EmbeddedBrokerError(
                f"broker cannot listen on {self.host}:{self.port}: {self._error}"
            ) from self._error
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        broker = self._cls(broker_config(self.host, self.port), loop=self._loop)
        try:
            await broker.start()
        except Exception as exc:  # amqtt wraps bind errors in its own BrokerError
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await broker.shutdown()
