"""Updates over a link of limited bandwidth: every MQTT client gets its own link to the broker.

On loopback the broker moves bytes faster than the agent can check and load them, so the ratio
to a raw message says little about a device on a LAN, Wi-Fi or a cellular modem. There, a raw
message is store-and-forward (the broker takes the whole message before it sends it on), while
an update's chunks are pipelined: the device pulls each chunk as the host sends it (the announce,
docs/protocol.md). `LinkProxy` is a TCP proxy in front of the broker that delays each
connection's bytes, each way, by their transmission time at `rate` bytes per second.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from types import TracebackType

logger = logging.getLogger(__name__)

READ = 65536


class LinkProxy:
    """127.0.0.1:port forwards to the broker at host:port; each client connection gets a link of
    rate bytes/s in each direction (no latency added)."""

    def __init__(self, host: str, port: int, rate: float) -> None:
        self.target, self.rate = (host, port), rate
        self._server = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = int(self._server.getsockname()[1])
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="link-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
                broker = socket.create_connection(self.target)
            except OSError:
                return  # closed
            with self._lock:
                self._open += [client, broker]
            for src, dst in ((client, broker), (broker, client)):
                src.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Forward src to dst; each read leaves once the link has had time to send it."""
        busy_until = 0.0
        try:
            while data := src.recv(READ):
                busy_until = max(time.monotonic(), busy_until) + len(data) / self.rate
                delay = busy_until - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for s in self._open:
                s.close()

    def __enter__(self) -> LinkProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
