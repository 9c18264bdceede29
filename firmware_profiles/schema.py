"""The device profile schema: what a device class can run, and the budgets a bundle must meet."""

from __future__ import annotations

import logging
import re
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

logger = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuantScheme(str, Enum):
    """How weights and activations are stored in the converted model."""

    INT8 = "int8"  # full integer: every op int8, no float anywhere
    INT8_FALLBACK = "int8-fallback"  # int8, but layers may stay float to meet the accuracy gate
    FLOAT16 = "float16"  # float16 weights, float compute
    DYNAMIC_RANGE = "dynamic-range"  # int8 weights, float activations
    INT16X8 = "int16x8"  # int16 activations, int8 weights

    @property
    def is_integer(self) -> bool:
        return self in (QuantScheme.INT8, QuantScheme.INT8_FALLBACK, QuantScheme.INT16X8)


class IODtype(str, Enum):
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    FLOAT32 = "float32"


class Target(_Strict):
    arch: str = Field(
        description="CPU architecture of the device, e.g. aarch64, armv7l, x86_64, xtensa."
    )
    cpu: str = Field(
        description="CPU or SoC, e.g. cortex-a72. Used to decide whether host latency is representative."
    )
    accelerator: str | None = Field(
        default=None, description="Accelerator, e.g. edgetpu; null for CPU only."
    )
    host_match: list[str] = Field(
        default_factory=list,
        description="platform.machine() values of hosts whose measured latency stands for this device.",
    )
    amx: bool = Field(
        default=False,
        description=(
            "The device's CPU has Intel AMX. When false, a host with AMX that stands for the device "
            "keeps XNNPACK off AMX while it measures latency: its AMX int8 kernels behave unlike "
            "any other CPU's."
        ),
    )


class Runtime(_Strict):
    engine: str = Field(default="litert", description="litert, tflite-micro or edgetpu.")
    threads: int = Field(default=1, ge=1, le=64, description="Interpreter threads.")
    delegate: str | None = Field(
        default=None,
        description="Delegate the agent loads: edgetpu, gpu, the path of an external delegate "
        "library, or null / xnnpack for the CPU (LiteRT applies XNNPACK by itself).",
    )
    delegate_options: dict[str, str] = Field(
        default_factory=dict,
        description="Options passed to the delegate, e.g. {device: usb} for the Edge TPU.",
    )

    @model_validator(mode="after")
    def _known_delegate(self) -> Runtime:
        d = (self.delegate or "").strip()
        known = {"xnnpack", "edgetpu", "gpu", "none", "cpu", ""}
        if d.lower() not in known and not re.search(r"[/\\]|\.(so(\.\d+)*|dylib|dll)$", d):
            raise ValueError(
                f"delegate {d!r}: use edgetpu, gpu, xnnpack, null, or the path of a delegate library"
            )
        return self


class Quantization(_Strict):
    scheme: QuantScheme = Field(description="Quantization scheme.")
    input_dtype: IODtype = Field(description="Model input tensor dtype.")
    output_dtype: IODtype = Field(description="Model output tensor dtype.")
    fallback_size_budget: float = Field(
        default=0.10,
        ge=0,
        le=10,
        description="Most model size the float fallback may add over the pure int8 model, as a "
        "fraction (0.10 = 10%). 0: no float layer may be kept.",
    )
    fallback_latency_budget: float = Field(
        default=0.10,
        ge=0,
        le=10,
        description="Most latency the float fallback may add over the pure int8 model, as a "
        "fraction of its latency (0.10 = 10%), estimated per layer from its multiply-accumulates.",
    )

    @property
    def allow_float_fallback(self) -> bool:
        return self.scheme is QuantScheme.INT8_FALLBACK

    @model_validator(mode="after")
    def _io_matches_scheme(self) -> Quantization:
        integer_io = {IODtype.INT8, IODtype.UINT8}
        if self.scheme is QuantScheme.INT8 and (
            self.input_dtype not in integer_io or self.output_dtype not in integer_io
        ):
            raise ValueError(
                "scheme int8 is full-integer: input_dtype and output_dtype must be int8 or uint8"
            )
        if self.scheme in (QuantScheme.FLOAT16, QuantScheme.DYNAMIC_RANGE) and (
            self.input_dtype is not IODtype.FLOAT32 or self.output_dtype is not IODtype.FLOAT32
        ):
            raise ValueError(f"scheme {self.scheme.value} keeps float32 input and output")
        if self.scheme is QuantScheme.INT16X8 and not (
            {self.input_dtype, self.output_dtype} <= {IODtype.INT16, IODtype.FLOAT32}
        ):
            raise ValueError("scheme int16x8 takes int16 or float32 input and output")
        return self


class Ops(_Strict):
    allowlist: list[str] | None = Field(
        default=None,
        description="TFLite builtin op names the device can run; null means any builtin op.",
    )
    custom: list[str] = Field(
        default_factory=list,
        description="Custom ops the device runtime provides, e.g. TFLite_Detection_PostProcess.",
    )


class Budgets(_Strict):
    max_model_bytes: int = Field(gt=0, description="Largest .tflite file the device accepts.")
    max_arena_bytes: int | None = Field(
        default=None, gt=0, description="Tensor arena / working RAM budget."
    )
    latency_ms: float = Field(gt=0, description="Per-inference latency budget on the device.")
    max_accuracy_drop: float = Field(
        ge=0,
        le=1,
        description="Largest accepted drop against the float model (0.01 = 1 point of top-1).",
    )


class PruningTarget(_Strict):
    channels: float | None = Field(
        default=None, ge=0, lt=1, description="Fraction of channels to remove."
    )
    macs: int | None = Field(
        default=None, gt=0, description="Largest MAC count of the pruned model."
    )
    latency_ms: float | None = Field(
        default=None, gt=0, description="Latency the pruned int8 model must meet."
    )
    min_channels: int = Field(
        default=8, ge=1, description="Channels always kept in a pruned layer."
    )
    round_to: int = Field(
        default=1,
        ge=1,
        description="Round kept channel counts to multiples of this (up, or down where that keeps "
        "the total removed closer to the target): the width of the device's int8 channel tiles, "
        "which benchmarks/channel_rounding.py finds. 1: no rounding.",
    )

    @model_validator(mode="after")
    def _one_target(self) -> PruningTarget:
        given = [v for v in (self.channels, self.macs, self.latency_ms) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one pruning target: channels, macs or latency_ms")
        return self


class Profile(_Strict):
    """One device class. Loaded from YAML; unknown keys are errors."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Profile name, used as --profile NAME."
    )
    description: str = Field(description="One line for people.")
    target: Target
    runtime: Runtime
    quantization: Quantization
    ops: Ops
    budgets: Budgets
    pruning: PruningTarget

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if self.runtime.engine == "tflite-micro" and self.quantization.allow_float_fallback:
            raise ValueError("tflite-micro has no float fallback: use scheme int8")
        if (
            self.target.accelerator == "edgetpu"
            and self.quantization.scheme is not QuantScheme.INT8
        ):
            raise ValueError("the Edge TPU runs full-integer models only: use scheme int8")
        q = self.quantization
        if (self.runtime.engine == "tflite-micro" or self.target.accelerator == "edgetpu") and (
            q.fallback_size_budget or q.fallback_latency_budget
        ):
            raise ValueError(
                "tflite-micro and the Edge TPU take no float layer: set fallback_size_budget and "
                "fallback_latency_budget to 0"
            )
        return self
