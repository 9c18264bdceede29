"""Calibration and validation data: an image folder, or an .npy/.npz array, made into model inputs.

Images are read in the model's color order, resized to the model input (agent.geometry.letterbox,
as on the device) and normalized as (pixel - mean) / std, exactly what agent.preprocess does. Integer arrays are pixels
and get the same treatment; float arrays are taken as already-normalized model inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.bundle.manifest import ColorOrder, ResizeMode
from agent.errors import EdgegapError
from agent.geometry.letterbox import resize_image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NPZ_INPUT_KEYS = ("x", "images", "inputs", "data")
NPZ_LABEL_KEYS = ("y", "labels")


@dataclass
class Dataset:
    """Normalized model inputs (N, H, W, C) float32, with optional labels (task specific)."""

    x: np.ndarray
    labels: Any = None
    source: str = ""


class DataError(EdgegapError, ValueError):
    """Calibration or validation data that is missing, empty, or does not fit the model."""


@dataclass(frozen=True)
class Normalization:
    """How pixels become model inputs; recorded in the manifest so the device does the same."""

    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [255.0])
    color_order: ColorOrder = ColorOrder.RGB
    resize: ResizeMode = ResizeMode.STRETCH

    def check(self, channels: int) -> None:
        for label, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise DataError(
                    f"--{label} has {len(values)} values; give one, or one per channel ({channels})"
                )
        if any(s == 0 for s in self.std):
            raise DataError("--std must be non-zero")
        if channels == 1 and self.color_order is not ColorOrder.GRAY:
            raise DataError(
                f"the model takes 1 channel; color order must be gray, not {self.color_order.value}"
            )
        if channels == 3 and self.color_order is ColorOrder.GRAY:
            raise DataError("the model takes 3 channels; color order must be rgb or bgr, not gray")

    def contradicted_by(
        self,
        mean: list[float] | None,
        std: list[float] | None,
        color_order: ColorOrder | str | None,
    ) -> str | None:
        """The first option given (None: not given) that says otherwise than this normalization, as
        its flag name (mean, std, color-order); None when every given one agrees. One value stands
        for every channel."""
        for flag, given, recorded in (("mean", mean, self.mean), ("std", std, self.std)):
            if given is not None and not _same_values(given, recorded):
                return flag
        if color_order is not None and ColorOrder(color_order) is not self.color_order:
            return "color-order"
        return None

    def swapped(self) -> Normalization:
        """The same map for pixels in the other color order (RGB <-> BGR): per-channel values reversed."""
        order = {ColorOrder.RGB: ColorOrder.BGR, ColorOrder.BGR: ColorOrder.RGB}.get(
            self.color_order
        )
        if order is None:
            raise DataError(f"a {self.color_order.value} input has no red and blue to swap")
        return Normalization(self.mean[::-1], self.std[::-1], order, self.resize)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """(pixels - mean) / std per channel, as float32."""
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return ((pixels.astype(np.float32) - mean) / std).astype(np.float32)


def _same_values(a: list[float], b: list[float]) -> bool:
    try:
        x, y = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    except ValueError:  # 2 values against 3, say
        return False
    return bool(np.array_equal(x, y))


def default_color_order(channels: int) -> ColorOrder:
    return ColorOrder.GRAY if channels == 1 else ColorOrder.RGB


def read_image(path: Path, color_order: ColorOrder) -> np.ndarray:
    """HxWxC uint8 pixels in the requested color order (C = 1 for gray)."""
    import cv2

    flag = cv2.IMREAD_GRAYSCALE if color_order is ColorOrder.GRAY else cv2.IMREAD_COLOR
    img = cv2.imread(str(path), flag)
    if img is None:
        raise DataError(f"cannot read image {path}")
    if color_order is ColorOrder.GRAY:
        return img[..., np.newaxis]
    if color_order is ColorOrder.RGB:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def _pick(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of at most `limit` samples, a seeded shuffle so class-sorted data stays balanced."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _load_images(
    folder: Path,
    shape: tuple[int, ...],
    norm: Normalization,
    limit: int | None,
    seed: int,
    what: str,
) -> Dataset:
    if len(shape) != 3:
        raise DataError(
            f"{what} {folder} is an image folder but the model input {shape} is not HxWxC"
        )
    files = _image_files(folder)
    if not files:
        raise DataError(f"{what} folder {folder} holds no .jpg or .png images")
    chosen = [files[i] for i in _pick(len(files), limit, seed)]
    pixels = np.stack(
        [resize_image(read_image(p, norm.color_order), shape[:2], norm.resize)[0] for p in chosen]
    )
    if pixels.shape[1:] != shape:
        raise DataError(
            f"{what} images have {pixels.shape[-1]} channels but the model takes {shape[-1]}"
        )
    classes = [p.relative_to(folder).parts[0] for p in chosen]
    labels: Any = None
    if all(len(p.relative_to(folder).parts) == 2 for p in chosen):
        names = sorted(set(classes))
        labels = {"y": np.array([names.index(c) for c in classes]), "class_names": names}
    return Dataset(norm.apply(pixels), labels=labels, source=f"{len(chosen)} images from {folder}")


def _array_from(path: Path) -> tuple[np.ndarray, Any]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read {path} as a NumPy array: {exc}") from exc
    if isinstance(loaded, np.ndarray):
        return loaded, None
    with loaded:
        keys = list(loaded.keys())
        key = next((k for k in NPZ_INPUT_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise DataError(
                f"{path} holds {keys}; name the input array one of {', '.join(NPZ_INPUT_KEYS)}"
            )
        x = loaded[key]
        lkey = next((k for k in NPZ_LABEL_KEYS if k in keys and k != key), None)
        y = loaded[lkey] if lkey else None
    return x, y


def _load_array(
    path: Path, shape: tuple[int, ...], norm: Normalization, limit: int | None, seed: int, what: str
) -> Dataset:
    x, y = _array_from(path)
    if x.ndim == len(shape) and len(shape) == 3 and shape[-1] == 1 and x.shape[1:] == shape[:2]:
        x = x[..., np.newaxis]  # (N, H, W) gray
    if x.ndim == len(shape):
        x = x[np.newaxis]
    if x.shape[1:] != shape:
        raise DataError(
            f"{what} {path} has samples of shape {tuple(x.shape[1:])} but the model takes {shape}"
        )
    if len(x) == 0:
        raise DataError(f"{what} {path} is empty")
    idx = _pick(len(x), limit, seed)
    labels: Any = None
    if y is not None and len(y) == len(x):
        labels = {"y": np.asarray(y)[idx]}
    x = x[idx]
    if np.issubdtype(x.dtype, np.integer):
        data = norm.apply(x)
        kind = f"{x.dtype.name} pixel samples"
    elif np.issubdtype(x.dtype, np.floating):
        data = x.astype(np.float32)
        kind = "normalized float samples"
        if np.abs(data).max() > 64 and max(norm.std) > 2:
            logger.warning(
                "%s %s is float with values up to %.0f: is it pixels? Save it as uint8 to normalize it",
                what,
                path,
                float(np.abs(data).max()),
            )
    else:
        raise DataError(f"{what} {path} has dtype {x.dtype}; use uint8 pixels or float32 inputs")
    return Dataset(data, labels=labels, source=f"{len(x)} {kind} from {path}")


def load_data(
    path: str | Path,
    shape: tuple[int, ...],
    norm: Normalization,
    limit: int | None = None,
    seed: int = 0,
    what: str = "calibration data",
) -> Dataset:
    """Model inputs (N, *shape) float32 from an image folder or an .npy/.npz file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    norm.check(shape[-1])
    if path.is_dir():
        return _load_images(path, shape, norm, limit, seed, what)
    if path.suffix.lower() in (".npy", ".npz"):
        return _load_array(path, shape, norm, limit, seed, what)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _load_images_list([path], shape, norm, what)
    raise DataError(f"{what} {path} is not an image folder, an image, or an .npy/.npz file")


def _load_images_list(
    files: list[Path], shape: tuple[int, ...], norm: Normalization, what: str
) -> Dataset:
    if len(shape) != 3:
        raise DataError(f"{what} is an image but the model input {shape} is not HxWxC")
    pixels = np.stack(
        [resize_image(read_image(p, norm.color_order), shape[:2], norm.resize)[0] for p in files]
    )
    return Dataset(norm.apply(pixels), source=f"{len(files)} image(s)")
