"""Load the model to convert: a .keras archive, a legacy .h5, a SavedModel directory, or a live Keras model.

Whatever the source, the result is a Keras model with one image-like input of fixed shape, plus the
names its outputs get in the exported signature; those names pair float outputs with converted ones.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import EdgegapError
from agent.runtime.native_log import quiet_native_stderr

logger = logging.getLogger(__name__)

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class ModelLoadError(EdgegapError, ValueError):
    """The model file is missing, is not a model, or Keras cannot rebuild it."""


def import_tf() -> Any:
    """Import TensorFlow with its native start-up chatter kept off the terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_native_stderr():
        import tensorflow as tf
    return tf


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, for a one-line user error."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def signature_name(raw: str, taken: Iterable[str] = ()) -> str:
    """A name usable as a TFLite signature key: letters, digits and underscores, unique."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", raw).strip("_") or "output"
    if name[0].isdigit():
        name = "t_" + name
    base, i, used = name, 1, set(taken)
    while name in used:
        name = f"{base}_{i}"
        i += 1
    return name


@dataclass
class SourceModel:
    """A loaded float model and how its single input and its outputs are named in the export."""

    model: Any  # keras.Model
    source: str
    kind: str  # keras, h5, saved_model, in-memory
    input_name: str
    input_shape: tuple[int, ...]  # without the batch dimension
    input_dtype: str
    output_keys: list[Any]  # how to pick each output from the model's return value
    output_names: list[str]  # signature keys, same order
    fixed_batch: int | None = None  # some SavedModels only take one batch size

    def outputs_of(self, value: Any) -> list[Any]:
        """The model's return value as a list, in output_names order."""
        if isinstance(value, dict):
            return [value[k] for k in self.output_keys]
        if isinstance(value, (list, tuple)):
            return [value[k] for k in self.output_keys]
        return [value]

    def predict(self, x: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
        """Float outputs for a batch of normalized inputs, in output_names order."""
        chunks: list[list[np.ndarray]] = []
        batch_size = self.fixed_batch or batch_size
        for start in range(0, len(x), batch_size):
            value = self.model(x[start : start + batch_size], training=False)
            chunks.append([np.asarray(v) for v in self.outputs_of(value)])
        return [np.concatenate([c[j] for c in chunks]) for j in range(len(self.output_names))]


def describe(
    model: Any, source: str = "<in-memory>", kind: str = "in-memory", fixed_batch: int | None = None
) -> SourceModel:
    """Read the input spec and output naming of a Keras model; refuse what cannot be exported."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError) as exc:
        raise ModelLoadError(
            f"{source}: the model has no defined input (a subclassed model): give its input shape "
            f"with --input-shape H,W,C ({one_line(exc)})"
        ) from exc
    if not inputs:
        raise ModelLoadError(
            f"{source}: the model has no defined input (a subclassed model): give its input shape "
            "with --input-shape H,W,C"
        )
    if len(inputs) != 1:
        raise ModelLoadError(
            f"{source}: the model has {len(inputs)} inputs; edgegap converts single-input models"
        )
    inp = inputs[0]
    shape = tuple(inp.shape[1:])
    if any(d is None for d in shape) or not shape:
        raise ModelLoadError(
            f"{source}: input shape {tuple(inp.shape)} has unknown dimensions; rebuild the model with a fixed "
            "input size, e.g. keras.Input((224, 224, 3))"
        )
    dtype = str(getattr(inp, "dtype", "float32"))
    if "float" not in dtype:
        raise ModelLoadError(
            f"{source}: input dtype is {dtype}; edgegap converts models with float input"
        )
    raw_name = str(getattr(inp, "name", "") or "input")
    probe = model(np.zeros((fixed_batch or 1, *shape), np.float32), training=False)
    keys, raws = _output_keys(model, probe)
    names: list[str] = []
    for raw in raws:
        names.append(signature_name(raw, names))
    if len(names) > 16:
        raise ModelLoadError(
            f"{source}: the model has {len(names)} outputs; a bundle holds at most 16"
        )
    return SourceModel(
        model=model,
        source=source,
        kind=kind,
        input_name=signature_name(raw_name.split(":")[0]),
        input_shape=tuple(int(d) for d in shape),
        input_dtype=dtype,
        output_keys=keys,
        output_names=names,
        fixed_batch=fixed_batch,
    )


def _output_keys(model: Any, probe: Any) -> tuple[list[Any], list[str]]:
    """How to pick each output out of the model's result, and the name each should get."""
    declared = list(getattr(model, "output_names", []) or [])
    if isinstance(probe, dict):
        keys: list[Any] = list(probe.keys())
        return keys, [str(k) for k in keys]
    if isinstance(probe, (list, tuple)):
        keys = list(range(len(probe)))
        return keys, declared if len(declared) == len(keys) else [f"output_{i}" for i in keys]
    return [0], [declared[0] if len(declared) == 1 else "output_0"]


def import_custom_objects(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Import Python files or modules that define custom Keras classes before a model is loaded.

    Returns the classes each defines, by bare class name: a .keras saved without a registration
    package names its classes that way, and Keras finds them only through `custom_objects`.
    """
    found: dict[str, Any] = {}
    for item in paths:
        module = _import_one(item)
        found.update(_classes_of(module))
    return found


def _import_one(item: str | Path) -> Any:
    path = Path(item)
    if path.suffix != ".py":
        try:
            return importlib.import_module(str(item))
        except ImportError as exc:
            raise ModelLoadError(
                f"cannot import custom objects module {item!r}: {one_line(exc)}"
            ) from exc
    if not path.is_file():
        raise ModelLoadError(f"custom objects file not found: {path}")
    mod_name = f"edgegap_custom_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelLoadError(f"importing {path} failed: {one_line(exc)}") from exc
    return module


def _classes_of(module: Any) -> dict[str, Any]:
    """The classes a module defines itself (not those it imports), by bare name."""
    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and obj.__module__ == module.__name__ and not name.startswith("_")
    }


def copy_model(model: Any) -> Any:
    """A copy of a Keras model with its weights, to change while the original stays as it is."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def wrap_subclassed(model: Any, input_shape: Sequence[int], source: str) -> Any:
    """A functional model taking `input_shape` (no batch) around a subclassed model."""
    import keras

    inp = keras.Input(tuple(int(d) for d in input_shape), name="input")
    try:
        out = model(inp)
    except Exception as exc:
        raise ModelLoadError(
            f"{source}: the model does not take input shape {tuple(input_shape)}: {one_line(exc)}"
        ) from exc
    return keras.Model(inp, out, name=signature_name(getattr(model, "name", "model")))


def _kind_of(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "saved_model"
        raise ModelLoadError(f"not a model: {path} is a directory without saved_model.pb")
    with path.open("rb") as fh:
        head = fh.read(8)
    if head == HDF5_MAGIC:
        return "h5"
    if zipfile.is_zipfile(path):
        return "keras"
    if path.suffix in (".keras", ".h5", ".hdf5"):
        raise ModelLoadError(f"not a model: {path} is not a valid {path.suffix} file")
    raise ModelLoadError(
        f"not a model: {path} is neither a .keras archive, an HDF5 (.h5) file nor a SavedModel directory"
    )


def _hint(exc: BaseException) -> str:
    text = one_line(exc)
    if (
        "Could not locate" in str(exc)
        or "Unknown layer" in str(exc)
        or "custom" in str(exc).lower()
    ):
        text += " (pass the file or module that defines the class with --custom-objects FILE.py)"
    return text


def _load_saved_model(path: Path) -> tuple[Any, int | None]:
    import keras

    tf = import_tf()

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"could not load SavedModel {path}: {one_line(exc)}") from exc
    sigs = dict(loaded.signatures)
    if not sigs:
        raise ModelLoadError(f"SavedModel {path} has no serving signature")
    endpoint = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
    _, kwargs = sigs[endpoint].structured_input_signature
    if len(kwargs) != 1:
        raise ModelLoadError(
            f"SavedModel {path} signature {endpoint!r} has {len(kwargs)} inputs; edgegap converts single-input models"
        )
    ((in_name, spec),) = kwargs.items()
    shape = spec.shape.as_list()
    if len(shape) < 2 or any(d is None for d in shape[1:]):
        raise ModelLoadError(
            f"SavedModel {path} input {in_name!r} has shape {shape}; a fixed size is needed"
        )
    if shape[0] not in (None, 1):
        raise ModelLoadError(
            f"SavedModel {path} takes a fixed batch of {shape[0]}; export it with batch 1 or None"
        )
    layer = keras.layers.TFSMLayer(str(path), call_endpoint=endpoint)
    inp = keras.Input(tuple(shape[1:]), name=signature_name(in_name), dtype=spec.dtype.name)
    model = keras.Model(inp, layer(inp), name=signature_name(path.name))
    return model, shape[0]


def load_model(
    path: str | Path,
    custom_objects: Sequence[str | Path] = (),
    input_shape: Sequence[int] | None = None,
) -> SourceModel:
    """Load MODEL from disk; every failure is a ModelLoadError with a one-line reason.

    With `input_shape`, a subclassed model (which has no input of its own) is wrapped in a
    functional model taking that shape.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model not found: {path}")
    kind = _kind_of(path)
    import_tf()
    classes = import_custom_objects(custom_objects)
    import keras

    fixed_batch = None
    if kind == "saved_model":
        model, fixed_batch = _load_saved_model(path)
    else:
        try:
            model = keras.models.load_model(str(path), custom_objects=classes, compile=False)
        except Exception as exc:
            raise ModelLoadError(f"could not load {path}: {_hint(exc)}") from exc
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"not a model: {path} holds a {type(model).__name__}")
    logger.info("loaded %s model from %s", kind, path)
    if input_shape is not None:
        model = wrap_subclassed(model, input_shape, str(path))
    return describe(model, str(path), kind, fixed_batch)
