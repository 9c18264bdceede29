"""`edgegap models rebuild`: convert a version's float model again with its recorded recipe
(converter.refresh.recipe) and say whether the result matches the version's stored bundle.

A rebuild matches when the model file is the same bytes (same sha256), or else when the rebuilt
model reproduces the stored bundle's golden outputs within their tolerance and passes its gates
(the fallback's choice of float layers measures latency, so two conversions on a busy machine
may keep different layers in float). A version rolled back to is rebuilt from the version it
re-issues.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.bundle.loading import MODEL_FILE, read_manifest
from agent.bundle.manifest import Manifest
from converter.options import Reporter
from converter.refresh import recipe
from converter.refresh.registry import Registry, RegistryError, Version, file_sha256

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rebuilt:
    version: int
    source: int  # the version whose float model and recipe were used
    bundle: Path
    matches: bool
    how: str  # "identical model", "golden outputs within tolerance", or why not
    sha256: str  # of the rebuilt model
    stored_sha256: str
    gates_passed: bool


def source_version(registry: Registry, version: int) -> Version:
    """The version whose float model and recipe made version's bundle (a rollback's original)."""
    record = registry.get(version)
    seen = {version}
    while isinstance(record.training.get("rollback_of"), int):
        original = int(record.training["rollback_of"])
        if original in seen:
            raise RegistryError(f"v{version}'s rollback records form a loop")
        seen.add(original)
        record = registry.get(original)
    return record


def rebuild(
    registry: Registry,
    version: int,
    output: Path,
    sign_key: Path | None = None,
    say: Callable[[str], None] = logger.info,
    reporter: Reporter | None = None,
) -> Rebuilt:
    """Convert the version's float model again into output; compare with the stored bundle."""
    from converter.pipeline import convert

    registry.get(version)
    stored = registry.bundle(version)
    if stored is None:
        raise RegistryError(
            f"v{version} has no bundle in {registry.root} to compare a rebuild with"
        )
    source = source_version(registry, version)
    model = registry.model(source.version)
    if not model.is_file():
        raise RegistryError(f"v{version} cannot be rebuilt: its float model {model} is missing")
    if file_sha256(model) != source.sha256:
        raise RegistryError(f"v{version} cannot be rebuilt: {model} changed since it was recorded")
    opts = recipe.options(registry, source.version, source.conversion, model, output)
    opts.version, opts.force, opts.sign_key = version, True, sign_key
    recorded = source.conversion.get("tensorflow")
    current = recipe.tf_version()
    if recorded != current:
        say(f"v{source.version} was converted with TensorFlow {recorded}, this is {current}")
    say(f"v{version} from {model} for {opts.profile.name}")
    result = convert(opts, reporter)
    return compare(version, source.version, read_manifest(stored), output, result.passed)


def compare(version: int, source: int, stored: Manifest, bundle: Path, gates: bool) -> Rebuilt:
    """The rebuilt bundle against the stored manifest: same model bytes, or the stored golden
    outputs reproduced within tolerance (with the gates passed)."""
    from agent.bundle.golden import check_golden
    from converter.manifest import open_converted

    rebuilt = read_manifest(bundle)
    sha, want = rebuilt.model.sha256, stored.model.sha256
    if sha == want:
        return Rebuilt(version, source, bundle, True, "identical model", sha, want, gates)
    if stored.golden is None:
        how = "different model and the stored bundle has no golden outputs to compare"
        return Rebuilt(version, source, bundle, False, how, sha, want, gates)
    model = open_converted((bundle / MODEL_FILE).read_bytes())
    golden = check_golden(model, rebuilt.model_copy(update={"golden": stored.golden}))
    if not golden.passed:
        how = f"different model whose golden outputs differ: {golden.reason}"
    elif not gates:
        how = "golden outputs within tolerance, but a gate failed"
    else:
        how = "golden outputs within tolerance (different model bytes)"
    return Rebuilt(version, source, bundle, golden.passed and gates, how, sha, want, gates)
