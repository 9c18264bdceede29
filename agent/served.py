"""One servable model: everything that belongs to one bundle, built off the frame path.

`load_served_model` verifies the bundle, opens its model in an interpreter, checks its tensors against the manifest and runs the golden check. The
result, a `ServedModel`, holds the interpreter with the pre-processing and decoder that go with it,
so the pipeline can be handed one whole model and, later, swap it for another between two frames.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.bundle.golden import GoldenResult, check_golden
from agent.bundle.io_check import check_model_io
from agent.bundle.loading import Bundle, BundleError, load_bundle
from agent.bundle.manifest import ColorOrder, Manifest, OutputRole, OutputSpec
from agent.config import AgentConfig, GoldenPolicy
from agent.config.sections import DelegateFallback
from agent.decoders import OutputDecoder, make_decoder, needed_outputs
from agent.outputs.messages import ModelRef
from agent.preprocess import Preprocessor
from agent.runtime import (
    DelegateSpec,
    LoadedModel,
    compiled,
    delegate_spec,
    get_backend,
    open_model,
)

if TYPE_CHECKING:
    from firmware_profiles.schema import Runtime as ProfileRuntime

logger = logging.getLogger(__name__)


class GoldenCheckFailed(BundleError):
    """The bundle's model does not reproduce its golden outputs on this device's runtime."""


@dataclass(frozen=True, eq=False)
class ServedModel:
    """A verified bundle, opened and checked, with the pre-processing and decoder it needs.

    The interpreter is not thread-safe: the pipeline's inference thread is its only user once the
    model serves. The decoder's score threshold may be changed by a command between frames.
    """

    bundle: Bundle
    model: LoadedModel
    preprocess: Preprocessor
    decoder: OutputDecoder
    color_swap: str  # "per frame" (an RGB model gets BGR frames swapped) or "none"
    golden: GoldenResult | None  # None when the check was skipped
    threads: int
    signed: bool  # the signature was verified against a trusted key

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @cached_property
    def ref(self) -> ModelRef:
        m = self.manifest
        return ModelRef(m.name, m.version, m.model.sha256, m.profile, m.task)

    @cached_property
    def needed(self) -> list[tuple[OutputRole | int, OutputSpec]]:
        """The outputs the decoder reads, with their specs: only these are copied out per frame."""
        return needed_outputs(self.decoder, self.manifest)

    def describe(self) -> dict[str, Any]:
        """The status message's `model` object."""
        m = self.manifest
        return {
            "name": m.name,
            "version": m.version,
            "sha256": m.model.sha256,
            "profile": m.profile,
            "color_swap": self.color_swap,
        }


def _profile_runtime(manifest: Manifest) -> ProfileRuntime | None:
    """The runtime section of the bundle's device profile, or None where that profile is not
    installed here: then 1 thread and no delegate."""
    try:
        from firmware_profiles import ProfileError, load_profile

        return load_profile(manifest.profile).runtime
    except (ProfileError, ImportError) as exc:
        logger.info("profile %s not found here (%s): 1 thread, no delegate", manifest.profile, exc)
        return None


def resolve_threads(config: AgentConfig, manifest: Manifest, cpus: int | None = None) -> int:
    """Threads from the config, else from the bundle's device profile (at most one per CPU of this
    machine: more would only take turns), else 1."""
    if config.runtime.threads:
        return config.runtime.threads
    profile = _profile_runtime(manifest)
    if profile is None:
        return 1
    wanted = profile.threads
    cpus = cpus or os.cpu_count() or wanted
    if wanted > cpus:
        logger.info(
            "profile %s asks for %d threads; this machine has %d CPUs",
            manifest.profile,
            wanted,
            cpus,
        )
    return min(wanted, cpus)


def resolve_delegate(config: AgentConfig, manifest: Manifest) -> DelegateSpec | None:
    """The delegate from the config (`none` there means the CPU), else from the bundle's device
    profile; the config's delegate_options are added to the profile's."""
    runtime = config.runtime
    name, options = runtime.delegate, {}
    if name is None:
        profile = _profile_runtime(manifest)
        if profile is not None:
            name, options = profile.delegate, dict(profile.delegate_options)
    return delegate_spec(name, {**options, **runtime.delegate_options})


def load_served_model(
    path: Path, config: AgentConfig, keys: list[Ed25519PublicKey], weight_cache: bool = False
) -> ServedModel:
    """Verify, open, check and wrap the bundle at path. Raises BundleError subclasses.

    weight_cache: open it over an XNNPACK weight cache built by a child process in the bundle's
    folder (agent.runtime.compiled) where that applies, so the load leaves the GIL to the frames.
    """
    bundle = load_bundle(path, keys)
    m = bundle.manifest
    threads = resolve_threads(config, m)
    delegate = resolve_delegate(config, m)
    content = bundle.model_bytes()
    model = None
    if weight_cache:
        model = _open_cached(content, bundle.model_path, threads, config, m)
    if model is None:
        model = _open(content, threads, config, delegate)
    check_model_io(model, m)
    golden = _check_golden(bundle, model, config.bundle.golden)
    det = config.detection
    swap = "per frame" if m.input.color_order is ColorOrder.RGB else "none"
    served = ServedModel(
        bundle=bundle,
        model=model,
        preprocess=Preprocessor(m.input, pad_value=int(m.extra.get("pad_value", 0))),
        decoder=make_decoder(m, det.score_threshold, det.max_detections, det.top_k),
        color_swap=swap,
        golden=golden,
        threads=threads,
        signed=bool(keys),
    )
    logger.info(
        "bundle %s v%d (%s, %s) on %s %s with %d thread(s), delegate %s%s",
        m.name,
        m.version,
        m.profile,
        m.decoder.value,
        model.backend,
        model.backend_version,
        threads,
        model.delegate or "none",
        ", signature verified" if keys else "",
    )
    return served


def _open(
    content: bytes, threads: int, config: AgentConfig, delegate: DelegateSpec | None
) -> LoadedModel:
    """The model opened and invoked once on zeros, so its first frame pays no lazy start-up."""
    model = open_model(
        content,
        threads=threads,
        backend=config.runtime.backend,
        delegate=delegate,
        fallback_cpu=config.runtime.delegate_fallback is DelegateFallback.CPU,
    )
    _warm_up(model)
    return model


def _warm_up(model: LoadedModel) -> None:
    spec = model.inputs[0]
    model.set_input(np.zeros(spec.shape, dtype=spec.dtype))
    model.invoke()


def no_weight_cache(config: AgentConfig, manifest: Manifest) -> str | None:
    """Why the model of manifest cannot load over a weight cache here, or None: it can."""
    if resolve_delegate(config, manifest) is not None:
        return "a delegate runs it"
    if get_backend(config.runtime.backend).name != compiled.BACKEND:
        return "not LiteRT"
    return compiled.unavailable()


def _open_cached(
    content: bytes, model_file: Path, threads: int, config: AgentConfig, manifest: Manifest
) -> LoadedModel | None:
    """The model over its weight cache, or None (with the reason logged) to load it as usual:
    a delegate, another backend than LiteRT, no CompiledModel, or a child or load that failed."""
    reason = no_weight_cache(config, manifest)
    if reason is not None:
        logger.info("no weight cache (%s): loading with the interpreter", reason)
        return None
    backend = get_backend(config.runtime.backend)
    cache_file = compiled.cache_path(model_file.parent, manifest.model.sha256)
    try:
        model = compiled.open_cached(content, model_file, threads, cache_file, backend.version)
        _warm_up(model)
        return model
    except (ImportError, compiled.ModelLoadError, ValueError, RuntimeError, OSError) as exc:
        logger.warning("weight cache not used (%s): loading with the interpreter", exc)
        return None


def _check_golden(bundle: Bundle, model: LoadedModel, policy: GoldenPolicy) -> GoldenResult | None:
    """Apply bundle.golden; raises GoldenCheckFailed."""
    m = bundle.manifest
    if policy is GoldenPolicy.SKIP:
        return None
    if m.golden is None:
        if policy is GoldenPolicy.REQUIRE:
            raise GoldenCheckFailed(
                f"{bundle.path}: bundle has no golden check and bundle.golden is require"
            )
        logger.warning("bundle has no golden check; serving it unchecked")
        return None
    result = check_golden(model, m)
    if not result.passed:
        raise GoldenCheckFailed(f"{bundle.path}: golden check failed: {result.reason}")
    logger.info(
        "golden check passed (max error %s)", ", ".join(f"{e:.3g}" for e in result.max_error)
    )
    return result
