"""Delegates: an accelerator's library handed to the interpreter (LiteRT's load_delegate).

A delegate is named `edgetpu`, `gpu`, or by the path of an external delegate library (one that
exports `tflite_plugin_create_delegate`); `none`, `cpu` and `xnnpack` mean the CPU, where LiteRT
applies XNNPACK by itself. A library that is missing gets an error naming it and how to install
it; a model that needs a custom op nobody resolves gets an error naming the op and the delegate
that provides it.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.runtime.base import ModelLoadError

logger = logging.getLogger(__name__)

CPU_NAMES = frozenset({"none", "cpu", "xnnpack"})

_CORAL_INSTALL = (
    "install libedgetpu1-std from Coral's apt repository (https://coral.ai/software/: add "
    "'deb https://packages.cloud.google.com/apt coral-edgetpu-stable main' to apt's sources, "
    "then apt-get install libedgetpu1-std)"
)
_GPU_INSTALL = (
    "build LiteRT's GPU delegate as a library that exports the external delegate interface "
    "(tflite_plugin_create_delegate; the stock libtensorflowlite_gpu_delegate.so target does not), "
    "or install your board vendor's, and put it on the library path or give its path as "
    "runtime.delegate"
)


@dataclass(frozen=True)
class KnownDelegate:
    """A delegate edgegap knows by name: its library per OS and how to install it."""

    name: str
    libraries: Mapping[str, str]  # platform.system() -> library file name
    install: str
    custom_ops: tuple[str, ...] = ()  # custom ops of models compiled for it, which it resolves

    def library(self) -> str:
        return self.libraries.get(platform.system(), self.libraries["Linux"])


KNOWN: dict[str, KnownDelegate] = {
    d.name: d
    for d in (
        KnownDelegate(
            "edgetpu",
            {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"},
            _CORAL_INSTALL,
            ("edgetpu-custom-op",),
        ),
        KnownDelegate("gpu", {"Linux": "libtensorflowlite_gpu_delegate.so"}, _GPU_INSTALL),
    )
}


class DelegateError(ModelLoadError):
    """A delegate was asked for and could not be loaded, or a custom op has no provider."""


@dataclass(frozen=True)
class DelegateSpec:
    """The delegate to load: a known name (edgetpu, gpu) or `external` with a library path."""

    name: str
    library: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def install(self) -> str:
        known = KNOWN.get(self.name)
        return known.install if known else "check the path and that the library exists"


def delegate_spec(
    name: str | None, options: Mapping[str, object] | None = None
) -> DelegateSpec | None:
    """The spec a config or profile names; None for the CPU. Raises DelegateError when unknown."""
    if name is None or name.strip().lower() in CPU_NAMES or not name.strip():
        return None
    opts = {str(k): str(v) for k, v in (options or {}).items()}
    key = name.strip()
    if key.lower() in KNOWN:
        known = KNOWN[key.lower()]
        return DelegateSpec(known.name, known.library(), opts)
    if looks_like_library(key):
        return DelegateSpec("external", key, opts)
    raise DelegateError(
        f"unknown delegate {name!r}: use edgetpu, gpu, none, or the path of a delegate library"
    )


def looks_like_library(name: str) -> bool:
    return "/" in name or "\\" in name or bool(re.search(r"\.(so(\.\d+)*|dylib|dll)$", name))


def describe(spec: DelegateSpec | None) -> str | None:
    """How status and the run summary name a delegate: edgetpu, gpu, or the library's path."""
    if spec is None:
        return None
    return spec.library if spec.name == "external" else spec.name


_PLUGIN_SYMBOLS = ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate")


def check_library(spec: DelegateSpec) -> None:
    """Raise DelegateError unless the library loads and exports the external delegate interface.

    Checked before the runtime's load_delegate, which leaves a half-built object behind (and a
    traceback at exit) when either fails.
    """
    try:
        lib = ctypes.CDLL(spec.library)
    except OSError as exc:
        raise load_failure(spec, exc) from exc
    missing = [sym for sym in _PLUGIN_SYMBOLS if not hasattr(lib, sym)]
    if missing:
        raise DelegateError(
            f"delegate {describe(spec)}: {spec.library} is not an external delegate library "
            f"(it does not export {missing[0]})"
        )


def load_failure(spec: DelegateSpec, exc: BaseException) -> DelegateError:
    """The error for a delegate whose library would not load: missing, or refused to start."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError):
        missing = "cannot open shared object" in text or "No such file" in text
        why = "not found" if missing else f"does not load ({text})"
        return DelegateError(
            f"delegate {describe(spec)}: library {spec.library} {why}; {spec.install}"
        )
    hint = " (is the device plugged in?)" if spec.name == "edgetpu" else ""
    return DelegateError(
        f"delegate {describe(spec)} ({spec.library}) failed to start{hint}: {text}"
    )


_UNRESOLVED = re.compile(r"unresolved custom op: ([^\s.]+(?:\.[^\s.]+)*)", re.IGNORECASE)


def unresolved_custom_op(message: str) -> str | None:
    """The custom op an interpreter error says it could not resolve, if it says so."""
    m = _UNRESOLVED.search(message)
    return m.group(1).rstrip(".") if m else None


def custom_op_error(
    op: str, spec: DelegateSpec | None, fallback_reason: str | None
) -> DelegateError:
    """The error for a model needing `op`, naming the delegate that provides it."""
    provider = next((d for d in KNOWN.values() if op in d.custom_ops), None)
    if provider is None:
        where = (
            "no delegate edgegap knows provides it; give the delegate library as runtime.delegate"
        )
    elif spec is not None and spec.name == provider.name:
        where = f"the {provider.name} delegate was loaded but did not resolve it"
    else:
        where = (
            f"the {provider.name} delegate provides it ({provider.library()}): set "
            f"runtime.delegate: {provider.name} and {provider.install}"
        )
    if fallback_reason is not None:
        return DelegateError(
            f"the model cannot run on the CPU: it needs custom op {op!r} "
            f"(delegate unavailable: {fallback_reason})"
        )
    return DelegateError(f"the model needs custom op {op!r}, which is not resolved: {where}")
