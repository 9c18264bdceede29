"""Frame sources: camera index, video file, RTSP/HTTP stream, image folder (all through OpenCV),
and synthetic frames made in memory (`synthetic:640x480@30`: no camera, no file).

A source reads BGR frames one at a time. Finite sources (files, folders) return None at their
end; live sources (cameras, streams) raise SourceLost on a dropout so the grabber can reopen them.
"""

from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from agent.config import SourceConfig, SourceKind
from agent.errors import EdgegapError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
SYNTHETIC_PREFIX = "synthetic"
SYNTHETIC = re.compile(r"^(?:synthetic:?)?(?:(\d{1,5})x(\d{1,5}))?(?:@(\d{1,4}(?:\.\d+)?))?\Z")
STREAM_SCHEMES = (
    "rtsp://",
    "rtsps://",
    "rtmp://",
    "http://",
    "https://",
    "udp://",
    "tcp://",
    "srt://",
)


class SourceError(EdgegapError, RuntimeError):
    """A source that cannot be used at all: missing, unreadable, not a video. Restarting will not help."""


class SourceLost(EdgegapError, RuntimeError):
    """A source that worked and stopped delivering frames mid-run."""


class FrameSource(ABC):
    """One source of BGR frames."""

    kind: ClassVar[SourceKind]
    live: ClassVar[bool] = False  # live sources are reopened with backoff when they drop out

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.uri = config.uri or ""

    @abstractmethod
    def open(self) -> None:
        """Open (or reopen from the start). Raise SourceError, or SourceLost for a live source that is down."""

    @abstractmethod
    def read(self) -> np.ndarray | None:
        """The next BGR frame; None at the end of a finite source. Raise SourceLost on a dropout."""

    @abstractmethod
    def close(self) -> None: ...

    @property
    def fps(self) -> float | None:
        """The source's own frame rate, when it has one."""
        return None

    def describe(self) -> str:
        return f"{self.kind.value} {self.uri}"


class _Capture(FrameSource):
    """Shared cv2.VideoCapture handling."""

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self._cap: cv2.VideoCapture | None = None

    def _open_capture(self) -> cv2.VideoCapture:
        raise NotImplementedError

    def open(self) -> None:
        self.close()
        self._cap = self._open_capture()

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise SourceLost(f"{self.describe()} is not open")
        ok, frame = self._cap.read()
        if ok and frame is not None:
            return frame
        return self._end()

    def _end(self) -> np.ndarray | None:
        raise SourceLost(f"{self.describe()} stopped delivering frames")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    @property
    def fps(self) -> float | None:
        if self._cap is None:
            return None
        value = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        return value if 0.5 < value < 1000 else None


class CameraSource(_Capture):
    kind = SourceKind.CAMERA
    live = True

    def _open_capture(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(int(self.uri))
        if not cap.isOpened():
            cap.release()
            raise SourceLost(
                f"camera {self.uri} cannot be opened (is it connected, and is it /dev/video{self.uri}?)"
            )
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self.config.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
        if self.config.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
        return cap


class StreamSource(_Capture):
    kind = SourceKind.STREAM
    live = True

    def _open_capture(self) -> cv2.VideoCapture:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self.config.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self.config.read_timeout_s * 1000),
        ]
        cap = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise SourceLost(f"stream {redact(self.uri)} cannot be opened")
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap

    def describe(self) -> str:
        return f"stream {redact(self.uri)}"


class VideoFileSource(_Capture):
    kind = SourceKind.FILE

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self._first: np.ndarray | None = None

    def _open_capture(self) -> cv2.VideoCapture:
        path = Path(self.uri)
        if not path.is_file():
            raise SourceError(f"video file not found: {path}")
        if not os.access(path, os.R_OK):
            raise SourceError(f"video file is not readable: {path} (permission denied)")
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{path} is not a video OpenCV can decode")
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            raise SourceError(f"{path} has no readable frames (empty, truncated or not a video)")
        self._first = frame
        return cap

    def read(self) -> np.ndarray | None:
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        return super().read()

    def _end(self) -> np.ndarray | None:
        return None


class ImageFolderSource(FrameSource):
    """Images in a folder, in name order. A folder that disappears mid-run is a lost source."""

    kind = SourceKind.IMAGES

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self._files: list[Path] = []
        self._next = 0

    def open(self) -> None:
        folder = Path(self.uri)
        if not folder.is_dir():
            raise SourceError(f"image folder not found: {folder}")
        self._files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(
                f"image folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        self._next = 0

    def read(self) -> np.ndarray | None:
        while self._next < len(self._files):
            path = self._files[self._next]
            self._next += 1
            if not path.parent.is_dir():
                raise SourceLost(f"image folder {path.parent} vanished mid-run")
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is not None:
                return frame
            if not path.exists():
                logger.warning("image %s vanished; skipped", path)
            else:
                logger.warning("image %s cannot be decoded; skipped", path)
        return None

    def close(self) -> None:
        self._files = []


class SyntheticSource(FrameSource):
    """Frames made in memory, for benches and headless rigs: no camera, no file, never ending.

    A red square crosses a gray gradient, one step per frame. The grabber paces it at its fps
    like a camera (rate `native`, the default; `max` and `all` run it unpaced). Making a 640x480
    frame is one copy (~0.1 ms), so the `grab` stage is nearly free.
    """

    kind = SourceKind.SYNTHETIC

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self.width, self.height, self._fps = synthetic_spec(config)
        self._background: np.ndarray | None = None
        self._index = 0

    def open(self) -> None:
        ramp = np.linspace(40, 200, self.width).astype(np.uint8)
        self._background = np.repeat(
            np.broadcast_to(ramp[None, :, None], (self.height, self.width, 1)), 3, axis=2
        )
        self._index = 0

    def read(self) -> np.ndarray | None:
        if self._background is None:
            raise SourceError(f"{self.describe()} is not open")
        index, self._index = self._index, self._index + 1
        frame = self._background.copy()
        side = max(4, min(self.width, self.height) // 6)
        x = (index * 4) % max(1, self.width - side)
        y = (index * 3) % max(1, self.height - side)
        frame[y : y + side, x : x + side] = (0, 0, 255)
        return frame

    def close(self) -> None:
        self._background = None

    @property
    def fps(self) -> float | None:
        return self._fps

    def describe(self) -> str:
        return f"synthetic {self.width}x{self.height}@{self._fps:g}"


def synthetic_spec(config: SourceConfig) -> tuple[int, int, float]:
    """Width, height and fps of a synthetic source: from `synthetic:WxH@FPS` (each part
    optional), else source.width, source.height and source.fps, else 640x480 at 30 fps."""
    match = SYNTHETIC.match(config.uri or "")
    if match is None:
        raise SourceError(
            f"synthetic source must look like synthetic:640x480@30, got {config.uri!r}"
        )
    w, h, fps = match.groups()
    width = int(w) if w else config.width or 640
    height = int(h) if h else config.height or 480
    rate = float(fps) if fps else config.fps or 30.0
    if not (8 <= width <= 8192 and 8 <= height <= 8192 and 0 < rate <= 1000):
        raise SourceError(
            f"synthetic source {width}x{height}@{rate:g}: sides must be 8-8192 px, fps 0-1000"
        )
    return width, height, rate


def redact(uri: str) -> str:
    """A stream URL without its password, for logs and status."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", uri)


def resolve_kind(config: SourceConfig) -> SourceKind:
    uri = config.uri or ""
    if config.kind is not SourceKind.AUTO:
        return config.kind
    if uri.isdigit():
        return SourceKind.CAMERA
    if uri.split(":", 1)[0] == SYNTHETIC_PREFIX:
        return SourceKind.SYNTHETIC
    if uri.lower().startswith(STREAM_SCHEMES):
        return SourceKind.STREAM
    if Path(uri).is_dir():
        return SourceKind.IMAGES
    return SourceKind.FILE


SOURCES: dict[SourceKind, type[FrameSource]] = {
    cls.kind: cls
    for cls in (CameraSource, StreamSource, VideoFileSource, ImageFolderSource, SyntheticSource)
}


def make_source(config: SourceConfig) -> FrameSource:
    """The source for config.uri; nothing is opened yet, but a video file must exist."""
    kind = resolve_kind(config)
    if not config.uri and kind is not SourceKind.SYNTHETIC:
        raise SourceError("no source given (source.uri or --source)")
    if kind is SourceKind.CAMERA and not (config.uri or "").isdigit():
        raise SourceError(f"camera source must be an index like 0, got {config.uri!r}")
    if kind is SourceKind.FILE and not Path(config.uri or "").is_file():
        raise SourceError(f"video file not found: {config.uri}")
    return SOURCES[kind](config)
