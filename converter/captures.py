"""`edgegap collect`'s logic: captures from devices become a COCO-style dataset folder.

Parts arrive on <prefix>/devices/+/captures (agent/capture/message.py); the Assembler joins them
into whole JPEGs (bounded: parts, bytes, captures in progress). The CaptureStore keeps them as
images/NNNNNN.jpg plus annotations.json, the folder format converter/tasks/detection_folder.py
reads, with no annotations (captures are unlabelled): each image entry keeps the device's own
detections as `device_detections` and its provenance. A perceptual hash (dHash) drops
near-duplicates; past max_images the oldest image goes. docs/protocol.md ("Captures") is the
user-facing description of the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.capture.message import CaptureError, CaptureHeader, parse_part
from converter.tasks.detection_folder import ANNOTATIONS_FILE, IMAGES_DIR, DatasetError

logger = logging.getLogger(__name__)

STORE_KIND = "edgegap.captures/1"
MAX_PENDING = 64  # captures whose parts are still arriving
MAX_PENDING_BYTES = 64 * 1024 * 1024
PENDING_TTL_S = 120.0
SEEN_KEPT = 100_000  # capture ids remembered to drop a capture delivered twice


@dataclass(frozen=True)
class Capture:
    header: CaptureHeader
    jpeg: bytes


def dhash(image: np.ndarray, size: int = 8) -> int:
    """The difference hash of an image (BGR or gray): size x size bits, each whether a pixel of
    the grey image shrunk to (size + 1) x size is brighter than its right-hand neighbour."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    small = cv2.resize(gray, (size + 1, size), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class Assembler:
    """Joins capture parts into captures; whatever does not fit its bounds is refused."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str], tuple[float, CaptureHeader, dict[int, bytes]]] = {}
        self._bytes = 0

    def add(self, topic: str, payload: bytes) -> Capture | None:
        """A whole capture once its last part is in; None while parts are missing. Raises
        CaptureError for a part that does not follow the format."""
        header, data = parse_part(payload)
        if topic.split("/")[-2:-1] != [header.device_id]:
            raise CaptureError(f"device {header.device_id} published on {topic}")
        size = header.image.size
        if len(data) > size:
            raise CaptureError(f"part {header.part} is bigger than the image")
        key = (header.device_id, header.id)
        self._expire(time.monotonic())
        if header.parts == 1:
            return _whole(header, data)
        if key not in self._pending:
            if len(self._pending) >= MAX_PENDING or self._bytes + size > MAX_PENDING_BYTES:
                raise CaptureError("too many captures in progress; this one is dropped")
            self._pending[key] = (time.monotonic(), header, {})
        _, first, parts = self._pending[key]
        if (first.parts, first.image.sha256) != (header.parts, header.image.sha256):
            raise CaptureError(f"capture {header.id}: parts disagree")
        if header.part not in parts:
            if sum(len(p) for p in parts.values()) + len(data) > size:
                self._drop(key)
                raise CaptureError(f"capture {header.id}: its parts hold more than its size")
            parts[header.part] = data
            self._bytes += len(data)
        if len(parts) < header.parts:
            return None
        self._drop(key)
        return _whole(first, b"".join(parts[i] for i in range(first.parts)))

    def _drop(self, key: tuple[str, str]) -> None:
        _, _, parts = self._pending.pop(key)
        self._bytes -= sum(len(p) for p in parts.values())

    def _expire(self, now: float) -> None:
        for key, (since, _, _) in list(self._pending.items()):
            if now - since > PENDING_TTL_S:
                logger.warning("capture %s/%s: parts missing; dropped", *key)
                self._drop(key)


def _whole(header: CaptureHeader, jpeg: bytes) -> Capture:
    if len(jpeg) != header.image.size or hashlib.sha256(jpeg).hexdigest() != header.image.sha256:
        raise CaptureError(f"capture {header.id}: the image does not match its size or sha256")
    return Capture(header, jpeg)


class CaptureStore:
    """A captures dataset folder, opened to add to it (an existing one is kept)."""

    def __init__(self, out_dir: Path, max_images: int, max_distance: int = 4) -> None:
        self.out_dir = out_dir
        self.max_images = max_images
        self.max_distance = max_distance
        self.doc = self._open()
        self.stored = self.duplicates = self.invalid = self.evicted = 0
        images = self.doc["images"]
        self._hashes = [int(im["dhash"], 16) for im in images]
        # (device, capture id) of stored captures, the newest kept, so a capture sent twice is not
        # stored twice; a dict: insertion-ordered, trimmed to SEEN_KEPT.
        self._seen = dict.fromkeys(
            (im["provenance"]["device_id"], im["provenance"]["capture_id"]) for im in images
        )

    def _open(self) -> dict[str, Any]:
        ann = self.out_dir / ANNOTATIONS_FILE
        if not ann.exists():
            if self.out_dir.exists() and any(self.out_dir.iterdir()):
                raise DatasetError(f"{self.out_dir} is not empty and holds no {ANNOTATIONS_FILE}")
            info = {
                "description": "edgegap captures (unlabelled)",
                "kind": STORE_KIND,
                "next_id": 1,
            }
            return {"info": info, "images": [], "annotations": [], "categories": []}
        try:
            doc = json.loads(ann.read_text())
            ok = doc["info"]["kind"] == STORE_KIND and isinstance(doc["images"], list)
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{ann} is not a captures store: {exc!r}") from exc
        if not ok:
            raise DatasetError(f"{ann} is not a captures store (info.kind is not {STORE_KIND})")
        return dict(doc)

    def __len__(self) -> int:
        return len(self.doc["images"])

    def create(self) -> None:
        """Make the folder if it is new: a valid, empty captures folder from the start."""
        if not (self.out_dir / ANNOTATIONS_FILE).exists():
            (self.out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
            self.save()

    def add(self, capture: Capture) -> str:
        """Store a capture: 'stored', 'duplicate' (same capture again, or a near-duplicate image)
        or 'invalid' (the JPEG does not decode to the size its header says)."""
        h = capture.header
        if (h.device_id, h.id) in self._seen:
            self.duplicates += 1
            return "duplicate"
        image = cv2.imdecode(np.frombuffer(capture.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None or image.shape[:2] != (h.image.height, h.image.width):
            self.invalid += 1
            return "invalid"
        code = dhash(image)
        if any(hamming(code, other) <= self.max_distance for other in self._hashes):
            self.duplicates += 1
            return "duplicate"
        self._write(capture, code)
        self.stored += 1
        return "stored"

    def _write(self, capture: Capture, code: int) -> None:
        self.create()
        h, doc = capture.header, self.doc
        image_id = int(doc["info"]["next_id"])
        doc["info"]["next_id"] = image_id + 1
        name = f"{IMAGES_DIR}/{image_id:06d}.jpg"  # never a name from the network
        (self.out_dir / name).write_bytes(capture.jpeg)
        doc["images"].append(_entry(image_id, name, capture, code))
        self._add_categories(capture)
        self._hashes.append(code)
        self._seen[(h.device_id, h.id)] = None
        while len(self._seen) > SEEN_KEPT:
            del self._seen[next(iter(self._seen))]
        while len(doc["images"]) > self.max_images:
            old = doc["images"].pop(0)
            self._hashes.pop(0)
            (self.out_dir / old["file_name"]).unlink(missing_ok=True)
            self.evicted += 1
        self.save()

    def _add_categories(self, capture: Capture) -> None:
        cats = self.doc["categories"]
        known = {c["id"] for c in cats}
        for d in capture.header.detections:
            if d.class_id + 1 not in known:
                cats.append({"id": d.class_id + 1, "name": d.label})
                known.add(d.class_id + 1)
        cats.sort(key=lambda c: c["id"])

    def save(self) -> None:
        """Write annotations.json (temporary file, then rename)."""
        ann = self.out_dir / ANNOTATIONS_FILE
        tmp = ann.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.doc, indent=1) + "\n")
        os.replace(tmp, ann)


def _entry(image_id: int, name: str, capture: Capture, code: int) -> dict[str, Any]:
    h = capture.header
    detections = []
    for d in h.detections:
        det: dict[str, Any] = {"label": d.label, "category_id": d.class_id + 1, "score": d.score}
        if d.box is not None:
            x0, y0, x1, y1 = d.box
            det["bbox"] = [x0, y0, round(x1 - x0, 1), round(y1 - y0, 1)]
        detections.append(det)
    provenance = {
        "device_id": h.device_id, "capture_id": h.id, "reason": h.reason, "ts": h.ts,
        "model": h.model.model_dump(), "received": round(time.time(), 3),
    }  # fmt: skip
    return {
        "id": image_id, "file_name": name, "width": h.image.width, "height": h.image.height,
        "dhash": f"{code:016x}", "provenance": provenance, "device_detections": detections,
    }  # fmt: skip
