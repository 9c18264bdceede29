"""`edgegap import`: an existing .tflite model in, a checked and signed bundle out, without
TensorFlow (it runs in the device install).

The model's input and output tensors, with their quantization, are read from the model itself;
converter.layouts picks the decoder. The golden outputs are recorded on this host's runtime, the
profile's gates (ops, size, arena, latency) are checked, and the bundle is written with a
report.json, as `edgegap convert` does. There is no float original, so no accuracy gate.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from agent.bundle.golden import record_golden
from agent.bundle.loading import write_bundle
from agent.bundle.manifest import (
    MAX_MANIFEST_BYTES,
    ColorOrder,
    Decoder,
    InputSpec,
    Manifest,
    ModelFile,
    OutputRole,
    ResizeMode,
)
from agent.bundle.signing import load_private_key, sign_manifest
from agent.decoders import DecoderError, make_decoder
from agent.errors import EdgegapError
from agent.runtime import DelegateError, LoadedModel, TensorInfo
from agent.runtime.delegates import KNOWN
from converter.gates import (
    INFO,
    GateResult,
    LatencyStats,
    Measured,
    host_arch,
    host_threads,
    latency_label,
    measure_latency,
    select_gates,
    verdict,
    withholds_amx,
)
from converter.graph import ModelGraph, read_graph
from converter.import_report import ImportResult, write_report
from converter.layouts import POSTPROCESS_OP, Layout, choose_layout
from converter.manifest import golden_tolerance, open_converted, output_spec
from converter.prepare import NAME_RE, read_labels
from converter.tasks.base import AccuracyReport
from firmware_profiles import Profile

logger = logging.getLogger(__name__)

MAX_MODEL_BYTES = 512 * 1024 * 1024  # the bundle's own bound (docs/bundle-format.md)
REPORT_FILE = "report.json"
GOLDEN_BUDGET = 256 * 1024  # bytes of base64 the golden outputs may take in the manifest


class ImportFailed(EdgegapError, ValueError):
    """The model cannot be imported as asked: one line for the user."""


@dataclass
class ImportOptions:
    model: Path
    profile: Profile
    output: Path
    decoder: Decoder | None = None  # None: recognise the layout
    extra: dict[str, Any] = field(default_factory=dict)  # decoder parameters (manifest.extra)
    labels: Path | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    color_order: ColorOrder | None = None
    resize: ResizeMode = ResizeMode.STRETCH
    boxes_output: str | None = None  # ssd_raw: the output with the box encodings, by name
    sign_key: Path | None = None
    name: str | None = None
    version: int | None = None
    force: bool = False
    latency_runs: int = 50
    golden_count: int = 3


def import_model(opts: ImportOptions) -> ImportResult:
    """Read, recognise, check, record, sign and (if the gates pass, or forced) write."""
    name, version = name_and_version(opts)
    key = load_private_key(opts.sign_key) if opts.sign_key else None
    if opts.output.exists() and not opts.output.is_dir():
        raise ImportFailed(f"--output {opts.output} exists and is not a directory")
    model_bytes = read_tflite(opts.model)
    graph = read_graph(model_bytes)
    model = open_here(model_bytes, graph)
    if len(model.inputs) != 1:
        raise ImportFailed(f"the model has {len(model.inputs)} inputs; a bundle feeds one image")
    labels = read_labels(opts.labels) if opts.labels else []
    layout = choose_layout(
        model.outputs, graph, postprocess_roles(model_bytes, graph), opts.decoder, opts.extra,
        len(labels) - int(opts.extra.get("label_offset", 0)), opts.boxes_output,
    )  # fmt: skip
    check_options(layout, opts)
    spec, note = input_spec(model.inputs[0], opts)
    manifest = Manifest(
        name=name,
        version=version,
        profile=opts.profile.name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        task=layout.task,
        decoder=layout.decoder,
        model=ModelFile(sha256=hashlib.sha256(model_bytes).hexdigest(), size=len(model_bytes)),
        input=spec,
        outputs=[output_spec(o, r) for o, r in zip(model.outputs, layout.roles, strict=True)],
        labels=labels,
        extra={**layout.extra, **opts.extra},
    )
    check_decoder(manifest)
    manifest = with_golden_stride(manifest, opts.golden_count)
    recorded = record_golden(model, manifest, seed=0, count=opts.golden_count)
    manifest = manifest.model_copy(update={"golden": golden_tolerance(manifest, recorded)})
    gates, latency = check_gates(opts, graph, model_bytes)
    manifest = manifest.model_copy(
        update={
            "metrics": import_metrics(opts, graph, model_bytes, latency, layout),
            "gates": verdict(gates, forced=opts.force),
        }
    )
    manifest = Manifest.model_validate(manifest.model_dump())
    check_size(manifest)
    if key is not None:
        manifest = sign_manifest(manifest, key)
    result = ImportResult(manifest, layout, graph, gates, latency, model_bytes, note)
    if result.passed or opts.force:
        result.bundle = write_bundle(opts.output, model_bytes, manifest).path
        result.report_path = write_report(result, opts.output / REPORT_FILE)
    return result


def name_and_version(opts: ImportOptions) -> tuple[str, int]:
    """--name (the model file's stem) and --version (the UTC time as YYYYMMDDHHMMSS)."""
    name = opts.name or opts.model.stem
    if not NAME_RE.match(name):
        raise ImportFailed(
            f"--name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    if opts.version is not None:
        return name, opts.version
    return name, int(time.strftime("%Y%m%d%H%M%S", time.gmtime()))


def with_golden_stride(manifest: Manifest, count: int) -> Manifest:
    """Large outputs are recorded every k-th value (extra.golden_stride), so the golden check
    fits its share of the manifest's 1 MiB."""
    values = sum(math.prod(o.shape) for o in manifest.outputs)
    stride = math.ceil(count * values * 4 * 4 / 3 / GOLDEN_BUDGET)
    if stride <= 1:
        return manifest
    return manifest.model_copy(update={"extra": {**manifest.extra, "golden_stride": stride}})


def check_size(manifest: Manifest) -> None:
    size = len(manifest.canonical_bytes())
    if size > MAX_MANIFEST_BYTES - 4096:  # room for the signature
        raise ImportFailed(
            f"the manifest would be {size:,} bytes, over the bundle's {MAX_MANIFEST_BYTES:,} "
            "(too many anchors or labels?)"
        )


# The decoder parameters each decoder reads (label_offset and pad_value: all of them).
DECODER_KEYS: dict[Decoder, frozenset[str]] = {
    Decoder.SSD_POSTPROCESS: frozenset(),
    Decoder.SSD_RAW: frozenset({
        "box_coding", "box_scales", "box_units", "extra_values", "score_activation",
        "background_class", "iou_threshold", "anchor_data", "anchor_generator", "boxes_output",
    }),
    Decoder.YOLO: frozenset({"box_units", "iou_threshold", "transposed", "box_format", "objectness"}),
    Decoder.CLASSIFICATION: frozenset(),
    Decoder.TENSOR: frozenset({"full_max_values", "frame_max_values"}),
}  # fmt: skip
_OPTION = {"anchor_data": "--anchors"}


def check_options(layout: Layout, opts: ImportOptions) -> None:
    """Decoder options the chosen decoder does not read are refused: signed into the manifest,
    they would do nothing, and they say the layout is not the one the user meant."""
    if "pad_value" in opts.extra and opts.resize is not ResizeMode.LETTERBOX:
        raise ImportFailed("--pad-value needs --resize letterbox")
    given = [*opts.extra, *(["boxes_output"] if opts.boxes_output is not None else [])]
    read = DECODER_KEYS[layout.decoder] | {"label_offset", "pad_value"}
    unused = [k for k in given if k not in read]
    if not unused:
        return
    names = ", ".join(_OPTION.get(k, "--" + k.replace("_", "-")) for k in unused)
    it, verb = ("it", "is") if len(unused) == 1 else ("them", "are")
    chosen = f"{layout.decoder.value} ({layout.why})"
    owners = [d.value for d, keys in DECODER_KEYS.items() if set(unused) <= keys]
    if len(owners) == 1:
        kind = f"a {owners[0]} option" if len(unused) == 1 else f"{owners[0]} options"
        raise ImportFailed(
            f"{names} {verb} {kind}, and the decoder is {chosen}: give --decoder {owners[0]}, "
            f"or leave {it} out"
        )
    raise ImportFailed(f"{names} {verb} not read by the decoder {chosen}: leave {it} out")


def check_decoder(manifest: Manifest) -> None:
    """The agent's own load-time check, so no bundle written here is refused there."""
    try:
        make_decoder(manifest)
    except DecoderError as exc:
        name = manifest.decoder.value
        text = str(exc)
        raise ImportFailed(text if text.startswith(f"{name}:") else f"{name}: {text}") from exc


def open_here(model_bytes: bytes, graph: ModelGraph) -> LoadedModel:
    """The model on this host's CPU runtime, where its golden outputs and latency are measured;
    a model compiled for an accelerator (a custom op only its delegate runs) is refused."""
    try:
        return open_converted(model_bytes, graph)
    except DelegateError as exc:
        ops = sorted(graph.custom_ops - {POSTPROCESS_OP})
        if not ops:
            raise ImportFailed(str(exc)) from exc
        providers = sorted({d.name for d in KNOWN.values() for op in ops if op in d.custom_ops})
        if providers:
            why = (
                f"the {' or '.join(providers)} delegate provides it: the model was compiled for "
                "that accelerator); import runs the model here to record its golden outputs, so "
                "import it as it was before it was compiled (bundles of compiled models are not "
                "supported)"
            )
        else:
            why = (
                "no delegate edgegap knows provides it); import runs the model here to record its "
                f"golden outputs, and custom ops other than {POSTPROCESS_OP} are not supported"
            )
        raise ImportFailed(
            f"the model needs custom op {', '.join(map(repr, ops))}, which this host's CPU runtime "
            f"cannot run ({why}"
        ) from exc


def read_tflite(path: Path) -> bytes:
    if not path.is_file():
        raise ImportFailed(f"model not found: {path}")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise ImportFailed(f"{path} is {size:,} bytes, over the bundle's {MAX_MODEL_BYTES:,}")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ImportFailed(f"not a TFLite model: {path} has no TFL3 identifier")
    return data


def postprocess_roles(model_bytes: bytes, graph: ModelGraph) -> dict[OutputRole, int] | None:
    """Tensor index of each TFLite_Detection_PostProcess output, from the op's own output list."""
    if POSTPROCESS_OP not in graph.custom_ops:
        return None
    from converter.tasks.ssd import roles_from_op

    return roles_from_op(model_bytes)


def input_spec(info: TensorInfo, opts: ImportOptions) -> tuple[InputSpec, str]:
    """The input as the model declares it, with the normalization the options give; without
    --mean/--std an integer input takes the pixels' bytes as they are (what its quantization
    means), a float one takes pixel / 255."""
    shape = list(info.shape)
    if len(shape) != 4 or shape[0] != 1 or shape[-1] not in (1, 3):
        raise ImportFailed(f"the model's input is {shape}; a bundle feeds [1, H, W, 1 or 3] images")
    dtype = np.dtype(info.dtype).name
    if dtype not in ("float32", "uint8", "int8", "int16"):
        raise ImportFailed(
            f"the model's input is {dtype}; a bundle feeds float32 or 8/16-bit images"
        )
    if dtype != "float32" and info.scale <= 0:
        raise ImportFailed(f"the model's {dtype} input has no quantization scale to feed it by")
    check_normalization(opts, shape[-1])
    mean, std, note = opts.mean, opts.std, ""
    if mean is None and std is None:
        if dtype in ("uint8", "int8") and info.scale > 0:
            shift = 128 if dtype == "int8" else 0
            mean, std = [float(shift + info.zero_point)], [1.0 / info.scale]
            note = f"{dtype} input fed the frame's bytes as they are (scale {info.scale:.6g}, zero point {info.zero_point})"
        else:
            note = f"{dtype} input assumed to take pixel / 255; give --mean and --std if not"
    mean, std = mean or [0.0], std or [255.0]
    color = opts.color_order or (ColorOrder.GRAY if shape[-1] == 1 else ColorOrder.RGB)
    try:
        spec = InputSpec(
            name=info.name, shape=shape, dtype=dtype, scale=info.scale, zero_point=info.zero_point,
            color_order=color, resize=opts.resize, mean=mean, std=std,
        )  # fmt: skip
    except ValueError as exc:
        raise ImportFailed(f"bad normalization: {exc}") from exc
    return spec, note


def check_normalization(opts: ImportOptions, channels: int) -> None:
    """--mean and --std: one value or one per channel, finite, and std non-zero."""
    for flag, values in (("--mean", opts.mean), ("--std", opts.std)):
        if values is None:
            continue
        if len(values) not in (1, channels):
            raise ImportFailed(
                f"{flag} has {len(values)} values; give one, or one per channel ({channels})"
            )
        if flag == "--std" and not all(math.isfinite(v) and v != 0 for v in values):
            raise ImportFailed(f"--std must be non-zero and finite: {values}")
        if not all(math.isfinite(v) for v in values):
            raise ImportFailed(f"{flag} must be finite: {values}")


def check_gates(
    opts: ImportOptions, graph: ModelGraph, model_bytes: bytes
) -> tuple[list[GateResult], LatencyStats]:
    """The profile's gates but accuracy, which needs a float original an import does not have."""
    profile = opts.profile
    latency = measure_latency(
        {"model": model_bytes},
        threads=host_threads(profile.runtime.threads),
        runs=opts.latency_runs,
        withhold_amx=withholds_amx(profile),
    )["model"]
    none = AccuracyReport("none", 0.0, 0.0, 0.0)
    measured = Measured(graph=graph, size=len(model_bytes), accuracy=none, latency=latency)
    gates = []
    for gate in select_gates(profile):
        if gate.name == "accuracy":
            gates.append(
                GateResult(
                    "accuracy",
                    INFO,
                    "not measured",
                    "-",
                    "an imported model has no float original to compare with",
                )
            )
        else:
            gates.append(gate.check(measured))
    return gates, latency


def import_metrics(
    opts: ImportOptions, graph: ModelGraph, model_bytes: bytes, q: LatencyStats, layout: Layout
) -> dict[str, Any]:
    return {
        "imported": {"from": opts.model.name, "layout": layout.why},
        "size_bytes": len(model_bytes),
        "latency_ms_p50": round(q.p50, 4),
        "latency_ms_p90": round(q.p90, 4),
        "latency_ms_p99": round(q.p99, 4),
        "latency_measured": latency_label(opts.profile),
        "host_arch": host_arch(),
        "latency_threads": q.threads,
        "runtime": q.backend,
        "arena_estimate_bytes": graph.arena_estimate,
        "float_ops": len(graph.float_layers),
    }
