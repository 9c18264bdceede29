"""An optional MJPEG preview: a small HTTP page showing the latest frame with its boxes drawn.

The pipeline only hands over references (update() is cheap); drawing and JPEG encoding happen
in the HTTP threads, at most max_fps per viewer, and only while someone is watching.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np

from agent.decoders.base import Detection

logger = logging.getLogger(__name__)

BOUNDARY = "edgegapframe"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>edgegap-agent preview</title>
<style>body{{background:#111;color:#ddd;font-family:sans-serif;margin:1em}}img{{max-width:100%}}</style>
</head><body><h3>{title}</h3><img src="/stream.mjpg" alt="live preview"></body></html>
"""


def _color(class_id: int) -> tuple[int, int, int]:
    hue = (class_id * 47) % 180
    hsv = np.array([[[hue, 200, 255]]], np.uint8)
    bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def draw_detections(image: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
    """A copy of the BGR image with boxes and labels drawn (classifier results as a text list)."""
    out = image.copy()
    line = 0
    for d in detections:
        color = _color(d.class_id)
        text = f"{d.label} {d.score:.2f}"
        if d.box is None:
            line += 1
            cv2.putText(
                out, text, (6, 16 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA
            )
            continue
        p1 = (int(round(d.box.xmin)), int(round(d.box.ymin)))
        p2 = (int(round(d.box.xmax)) - 1, int(round(d.box.ymax)) - 1)
        cv2.rectangle(out, p1, p2, color, 2)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        y = max(p1[1], th + 4)
        cv2.rectangle(out, (p1[0], y - th - 4), (p1[0] + tw + 4, y), color, -1)
        cv2.putText(
            out, text, (p1[0] + 2, y - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA
        )
    return out


class PreviewServer:
    """Serves / (a page), /stream.mjpg (multipart JPEG) and /snapshot.jpg."""

    def __init__(
        self, bind: str, port: int, max_fps: float = 10.0, jpeg_quality: int = 80, title: str = ""
    ) -> None:
        self.max_fps = max_fps
        self.jpeg_quality = jpeg_quality
        self.title = title or "edgegap-agent"
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, list[Detection]] | None = None
        self._seq = 0
        self._closing = False
        self._httpd = ThreadingHTTPServer((bind, port), self._handler())
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="edgegap-preview", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        logger.info("preview: http://%s:%d/", self._httpd.server_address[0], self.port)

    def update(self, image: np.ndarray, detections: list[Detection]) -> None:
        with self._cond:
            self._latest = (image, detections)
            self._seq += 1
            self._cond.notify_all()

    def jpeg(self) -> bytes | None:
        with self._cond:
            latest = self._latest
        if latest is None:
            return None
        ok, buf = cv2.imencode(
            ".jpg", draw_detections(*latest), [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]
        )
        return bytes(buf) if ok else None

    def _wait_newer(self, seen: int, timeout: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self._seq != seen or self._closing, timeout)
            return self._seq

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                logger.debug("preview: " + fmt, *args)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/":
                    self._send(
                        HTTPStatus.OK,
                        "text/html; charset=utf-8",
                        PAGE.format(title=server.title).encode(),
                    )
                elif path == "/snapshot.jpg":
                    data = server.jpeg()
                    if data is None:
                        self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no frame yet\n")
                    else:
                        self._send(HTTPStatus.OK, "image/jpeg", data)
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

            def _send(self, status: HTTPStatus, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                seen, period = -1, 1.0 / server.max_fps
                try:
                    while not server._closing:
                        started = time.monotonic()
                        seen = server._wait_newer(seen, timeout=1.0)
                        data = server.jpeg()
                        if data is None:
                            continue
                        head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                        self.wfile.write(head.encode() + data + b"\r\n")
                        self.wfile.flush()
                        rest = period - (time.monotonic() - started)
                        if rest > 0:
                            time.sleep(rest)
                except (BrokenPipeError, ConnectionResetError):
                    logger.debug("preview: a viewer left")

        return Handler
