"""A deterministic detection dataset made from real content that ships in pip wheels.

Handwritten digits (scikit-learn) and simple shapes are pasted onto crops of scikit-image's
sample photographs, with random scale, colour, texture, occlusion, blur, noise and lighting.
Each image is drawn from its own seed (dataset seed, split, index), so any image of any split can
be regenerated alone, and the digit instances of the train, val and test splits are disjoint.

Two domains: "a" is the reference dataset the committed detector was trained on; "b" is the
same classes after a camera drift it never saw: other backgrounds (documents, a clock, a colour
wheel, a logo, a checkerboard, a phantom), seen at night under a sodium-vapour colour cast, with
low light and the sensor noise that comes with it (docs/refresh.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from converter.tasks.detection_folder import ANNOTATIONS_FILE, IMAGES_DIR

logger = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("digit", "circle", "triangle", "square")
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_COUNTS = {"train": 4000, "val": 300, "test": 300}
DATASET_ID = "edgegap-synthetic-detection-v1"  # bump when generation changes
DOMAINS: tuple[str, ...] = ("a", "b")
DOMAIN_B_ID = "edgegap-synthetic-detection-b-v1"  # bump when domain b's generation changes

_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "stereo_motorcycle", "brick", "grass", "gravel", "camera", "moon", "coins", "cell",
)  # fmt: skip
_PHOTOS_B = ("page", "text", "clock", "colorwheel", "checkerboard", "logo", "shepp_logan_phantom")
_DIGIT_SPLIT = (0.7, 0.15, 0.15)


@dataclass(frozen=True)
class Sample:
    """One image with its ground truth: boxes are (ymin, xmin, ymax, xmax) in [0, 1]."""

    image: np.ndarray  # H x W x 3 uint8, RGB
    boxes: np.ndarray  # (n, 4) float32
    classes: np.ndarray  # (n,) int32, index into the class names


@cache
def _photos(domain: str = "a") -> tuple[np.ndarray, ...]:
    """The sample photographs of a domain that ship inside the scikit-image wheel, as RGB uint8."""
    import skimage.data

    out = []
    for name in _PHOTOS if domain == "a" else _PHOTOS_B:
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
            img = img[0]
        img = np.asarray(img)
        if img.dtype.kind == "f":  # shepp_logan_phantom: floats in [0, 1]
            img = np.clip(img * 255, 0, 255)
        if img.dtype != np.uint8:
            img = (img > 0).astype(np.uint8) * 255 if img.dtype == bool else img.astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(img[..., :3]))
    return tuple(out)


@cache
def _digits() -> tuple[np.ndarray, ...]:
    """Normalized 8x8 digit images, one array per split, disjoint, in a fixed order."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0
    order = np.random.default_rng(20240611).permutation(len(images))
    n_train = int(len(images) * _DIGIT_SPLIT[0])
    n_val = int(len(images) * _DIGIT_SPLIT[1])
    parts = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    return tuple(images[p] for p in parts)


def _crop(rng: np.random.Generator, h: int, w: int, domain: str = "a") -> np.ndarray:
    """A random crop of a random photograph, resized to h x w, maybe flipped and tinted."""
    photos = _photos(domain)
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    side = int(min(ph, pw) * rng.uniform(0.25, 1.0))
    ch = max(8, min(ph, int(side * rng.uniform(0.8, 1.25) * h / max(h, w))))
    cw = max(8, min(pw, int(side * rng.uniform(0.8, 1.25) * w / max(h, w))))
    y, x = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
    patch = cv2.resize(photo[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    tint = rng.uniform(0.8, 1.2, 3).astype(np.float32)
    return np.clip(patch.astype(np.float32) * tint, 0, 255)


def _shape_mask(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """Soft (anti-aliased) mask in [0, 1] of a shape that fills an h x w box."""
    k = 4
    canvas = np.zeros((h * k, w * k), np.uint8)
    H, W = h * k - 1, w * k - 1
    if kind == "circle":
        cv2.ellipse(canvas, (W // 2, H // 2), (W // 2, H // 2), 0, 0, 360, 255, -1, cv2.LINE_AA)
    elif kind == "triangle":  # apex on one side, base on the opposite side, any of 4 turns
        turns = int(rng.integers(4))
        if turns % 2:
            canvas, H, W = canvas.T.copy(), W, H
        apex = int(W * rng.uniform(0.15, 0.85))
        cv2.fillPoly(canvas, [np.array([[apex, 0], [0, H], [W, H]], np.int32)], 255, cv2.LINE_AA)
        canvas = np.rot90(canvas, turns)
    else:  # square: a rectangle, sometimes slightly rotated inside its box
        angle = rng.uniform(-12, 12) if rng.random() < 0.4 else 0.0
        c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        hw, hh = (
            W / 2 / (abs(c) + abs(s) * H / max(W, 1)),
            H / 2 / (abs(c) + abs(s) * W / max(H, 1)),
        )
        rect = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
        pts = rect @ np.array([[c, s], [-s, c]]) + [W / 2, H / 2]
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 255, cv2.LINE_AA)
    canvas = np.ascontiguousarray(canvas)
    return cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _digit_mask(rng: np.random.Generator, split: int, h: int, w: int) -> np.ndarray:
    pool = _digits()[split]
    digit = pool[rng.integers(len(pool))]
    up = cv2.resize(digit, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = 0.25, 0.55
    return np.clip((up - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _fill(
    rng: np.random.Generator, h: int, w: int, behind: np.ndarray, digit: bool, domain: str
) -> np.ndarray:
    """Colour or texture of an object, chosen to stand out from what lies behind it."""
    if not digit and rng.random() < 0.35:
        texture = _crop(rng, h, w, domain)
        shift = 255.0 - behind.mean(axis=(0, 1))  # push the texture away from the background tone
        return np.clip(0.5 * texture + 0.5 * np.where(shift > 127, 255.0, 0.0), 0, 255)
    candidates = rng.uniform(0, 255, (8, 3))
    mean = behind.reshape(-1, 3).mean(axis=0)
    color = candidates[np.argmax(np.linalg.norm(candidates - mean, axis=1))]
    gy = np.linspace(rng.uniform(0.8, 1.0), rng.uniform(1.0, 1.2), h, dtype=np.float32)[
        :, None, None
    ]
    return np.clip(np.broadcast_to(color, (h, w, 3)) * gy, 0, 255)


def _place(
    rng: np.random.Generator, taken: list[tuple[int, int, int, int]], size: int, h: int, w: int
) -> tuple[int, int] | None:
    for _ in range(30):
        y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        if all(_overlap((y, x, y + h, x + w), t) < 0.1 for t in taken):
            return y, x
    return None


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ih = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _occlude(
    rng: np.random.Generator, img: np.ndarray, box: tuple[int, int, int, int], domain: str
) -> None:
    """Cover a strip along one side of a box with a patch of another photograph."""
    y0, x0, y1, x1 = box
    frac = rng.uniform(0.15, 0.35)
    side = int(rng.integers(4))
    if side in (0, 1):
        cut = max(1, int((y1 - y0) * frac))
        ys, ye = (y0, y0 + cut) if side == 0 else (y1 - cut, y1)
        xs, xe = x0 - int(rng.integers(0, 6)), x1 + int(rng.integers(0, 6))
    else:
        cut = max(1, int((x1 - x0) * frac))
        xs, xe = (x0, x0 + cut) if side == 2 else (x1 - cut, x1)
        ys, ye = y0 - int(rng.integers(0, 6)), y1 + int(rng.integers(0, 6))
    ys, xs = max(ys, 0), max(xs, 0)
    ye, xe = min(ye, img.shape[0]), min(xe, img.shape[1])
    if ye > ys and xe > xs:
        img[ys:ye, xs:xe] = _crop(rng, ye - ys, xe - xs, domain)


def _lighting(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    size = img.shape[0]
    img = img * rng.uniform(0.6, 1.3) + rng.uniform(-20, 20)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
        ramp = 1.0 + rng.uniform(0.15, 0.35) * (np.cos(angle) * xx + np.sin(angle) * yy) * 2
        img = img * ramp[..., None]
    img = np.clip(img, 0, 255)
    gamma = rng.uniform(0.7, 1.4)
    img = 255.0 * (img / 255.0) ** gamma
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.6))
    noise = rng.uniform(0, 8)
    if noise > 1:
        img = img + rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _night(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Domain b's camera: low light under a sodium-vapour cast, with the sensor noise of a high
    gain (shot noise grows with the signal, read noise does not)."""
    cast = np.array([1.0, rng.uniform(0.62, 0.78), rng.uniform(0.30, 0.45)], np.float32)
    gain = rng.uniform(0.28, 0.45)
    x = img.astype(np.float32) * gain * cast
    x = 255.0 * (x / 255.0) ** rng.uniform(1.1, 1.4)  # dark tones crushed further
    shot = np.sqrt(np.maximum(x, 0.0)) * rng.uniform(0.5, 0.9)
    x = x + rng.normal(0.0, 1.0, x.shape).astype(np.float32) * (shot + rng.uniform(2.0, 5.0))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def make_sample(
    split: str, index: int, seed: int = 0, size: int = 192, domain: str = "a"
) -> Sample:
    """Image `index` of a split of a domain: the same pixels and boxes on every run and platform."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    split_id = SPLITS.index(split)
    key = [seed, split_id, index] if domain == "a" else [seed, split_id, index, 1]
    rng = np.random.default_rng(key)
    img = _crop(rng, size, size, domain)
    taken: list[tuple[int, int, int, int]] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(len(CLASSES)))
        side = size * float(np.exp(rng.uniform(np.log(0.12), np.log(0.42))))
        aspect = (
            rng.uniform(1.0, 1.4) if CLASSES[cls] == "digit" else np.exp(rng.uniform(-0.35, 0.35))
        )
        h, w = (
            max(6, int(round(side * np.sqrt(aspect)))),
            max(6, int(round(side / np.sqrt(aspect)))),
        )
        h, w = min(h, size - 2), min(w, size - 2)
        if CLASSES[cls] == "square" and rng.random() < 0.5:
            h = w = min(h, w)
        where = _place(rng, taken, size, h, w)
        if where is None:
            continue
        y, x = where
        if CLASSES[cls] == "digit":
            mask = _digit_mask(rng, split_id, h, w)
        else:
            mask = _shape_mask(rng, CLASSES[cls], h, w)
        rows, cols = np.nonzero(mask > 0.5)
        if rows.size == 0:
            continue
        behind = img[y : y + h, x : x + w]
        fill = _fill(rng, h, w, behind, CLASSES[cls] == "digit", domain)
        a = mask[..., None]
        img[y : y + h, x : x + w] = behind * (1 - a) + fill * a
        taken.append(
            (
                y + int(rows.min()),
                x + int(cols.min()),
                y + int(rows.max()) + 1,
                x + int(cols.max()) + 1,
            )
        )
        classes.append(cls)
    for box in taken:
        if rng.random() < 0.25:
            _occlude(rng, img, box, domain)
    boxes = np.asarray(taken, np.float32).reshape(-1, 4) / size
    image = _lighting(rng, img)
    if domain == "b":
        image = _night(rng, image)
    return Sample(image, boxes, np.asarray(classes, np.int32))


def generate(
    split: str, count: int, seed: int = 0, size: int = 192, start: int = 0, domain: str = "a"
) -> Iterator[Sample]:
    for i in range(start, start + count):
        yield make_sample(split, i, seed, size, domain)


def to_arrays(samples: Sequence[Sample]) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Stack images into (N, H, W, 3) uint8, keeping boxes and classes per image."""
    images = np.stack([s.image for s in samples]) if samples else np.zeros((0, 0, 0, 3), np.uint8)
    return images, [s.boxes for s in samples], [s.classes for s in samples]


def write_folder(
    out_dir: Path, samples: Sequence[Sample], info: dict[str, object] | None = None
) -> Path:
    """Write images/NNNNNN.png and a COCO-style annotations.json (pixel boxes, 1-based categories)."""
    out_dir = Path(out_dir)
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, s in enumerate(samples):
        h, w = s.image.shape[:2]
        name = f"{IMAGES_DIR}/{i:06d}.png"
        cv2.imwrite(str(out_dir / name), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for box, cls in zip(s.boxes, s.classes, strict=True):
            y0, x0, y1, x1 = (float(v) for v in box * np.array([h, w, h, w]))
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": round((x1 - x0) * (y1 - y0), 2), "iscrowd": 0,
            })  # fmt: skip
    doc = {
        "info": {"description": "edgegap synthetic detection set", **(info or {})},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)],
    }
    (out_dir / ANNOTATIONS_FILE).write_text(json.dumps(doc, indent=1) + "\n")
    return out_dir / ANNOTATIONS_FILE
