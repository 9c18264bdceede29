"""`edgegap broker`: an embedded MQTT broker (amqtt) for a lab, a demo or a test bench."""

from __future__ import annotations

import logging
import signal
import threading

import click

from converter.console import console
from converter.embedded_broker import EmbeddedBroker

logger = logging.getLogger(__name__)


@click.command("broker")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=1883, show_default=True)
def broker_cmd(host: str, port: int) -> None:
    """Run an MQTT broker here until Ctrl-C: anonymous, no TLS, retained messages in memory.

    For a lab or a demo; a fleet wants mosquitto with TLS and an ACL (docs/deployment.md).
    `edgegap publish` and the agent work against it unchanged.

    \b
    Examples:
      edgegap broker --port 1883
      edgegap publish bundle/ --broker mqtt://127.0.0.1:1883 --channel lab
    """
    broker = EmbeddedBroker(host, port).start()
    stop = threading.Event()
    # SIGINT and SIGTERM both stop it cleanly, whatever the caller left them as: a shell script
    # that starts it in the background has SIGINT ignored, which Python then keeps
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    console.print(f"broker listening on {broker.url} (Ctrl-C stops it; retained messages are lost)")
    try:
        while broker.running and not stop.wait(0.5):
            pass
        if stop.is_set():
            console.print("stopping")
    finally:
        broker.stop()
