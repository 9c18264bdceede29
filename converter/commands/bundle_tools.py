"""`edgegap verify`, `inspect` and `bench`: look at a bundle without TensorFlow, as a device would."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from rich.table import Table

from agent.bundle.io_check import check_model_io
from agent.bundle.loading import (
    MODEL_FILE,
    check_model_file,
    read_manifest,
)
from agent.errors import EdgegapError
from converter.console import console, human_bytes
from converter.loading import quiet_native_stderr

logger = logging.getLogger(__name__)


class VerifyError(EdgegapError, ValueError):
    """The bundle's model does not behave as its manifest says."""


@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--key",
    "keys",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Trusted Ed25519 public key (repeatable). With a key, the bundle must be signed by it.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Interpreter threads.",
)
def verify(bundle: Path, keys: tuple[Path, ...], threads: int) -> None:
    """Check BUNDLE: model sha256 and size, signature, tensor specs, and the golden outputs.

    The golden inputs are regenerated from their seed and re-run in the interpreter; every
    output must match what was recorded at conversion, within its tolerance.

    \b
    Examples:
      edgegap verify bundle/
      edgegap verify bundle/ --key keys/edgegap.pub
    """
    with quiet_native_stderr():
        _verify(bundle, keys, threads)


def _verify(bundle: Path, keys: tuple[Path, ...], threads: int) -> None:
    from agent.bundle.golden import check_golden
    from agent.bundle.signing import load_public_key, verify_manifest
    from agent.runtime import open_model

    rows: list[tuple[str, str]] = []
    manifest = read_manifest(bundle)
    check_model_file(bundle, manifest)
    rows.append(
        ("sha256", f"ok ({manifest.model.sha256[:16]}…, {human_bytes(manifest.model.size)})")
    )
    if keys:
        signer = verify_manifest(manifest, [load_public_key(k) for k in keys])
        rows.append(("signature", f"ok (key {signer})"))
    else:
        signed = f"signed by {manifest.signature.key_id}" if manifest.signature else "unsigned"
        rows.append(("signature", f"not checked: no --key ({signed})"))
    model = open_model(bundle / MODEL_FILE, threads)
    check_model_io(model, manifest)
    rows.append(
        (
            "tensors",
            f"ok (input {manifest.input.shape} {manifest.input.dtype}, {len(manifest.outputs)} outputs)",
        )
    )
    result = check_golden(model, manifest)
    if not result.passed:
        raise VerifyError(f"golden check failed: {result.reason}")
    worst = ", ".join(f"{e:.3g}" for e in result.max_error)
    rows.append(
        (
            "golden",
            f"ok ({manifest.golden.count if manifest.golden else 0} inputs, max error {worst}; {model.backend} {model.backend_version})",
        )
    )
    gates = manifest.gates
    if gates and not gates.get("passed", True):
        rows.append(
            (
                "gates",
                f"[red]bundle was forced past failed gates: {', '.join(gates.get('failed', []))}[/]",
            )
        )
    table = Table(title=f"verify {bundle}", title_justify="left", show_header=False)
    table.add_column("check")
    table.add_column("result", overflow="fold")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    console.print(
        f"[green]bundle {manifest.name} v{manifest.version} ({manifest.profile}) verified[/]"
    )


@click.command("bench")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Interpreter threads [default: the profile's, capped at this host's CPUs].",
)
@click.option(
    "--runs", type=click.IntRange(min=1), default=200, show_default=True, help="Timed invokes."
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Untimed invokes first.",
)
def bench(bundle: Path, threads: int | None, runs: int, warmup: int) -> None:
    """Time BUNDLE's model with LiteRT on this host: p50, p90 and p99 latency.

    \b
    Examples:
      edgegap bench bundle/
      edgegap bench bundle/ --threads 4 --runs 500
    """
    from converter.gates import (
        host_cpu,
        host_measured,
        host_threads,
        measure_latency,
        withholds_amx,
    )
    from firmware_profiles import ProfileError, load_profile

    manifest = read_manifest(bundle)
    check_model_file(bundle, manifest)
    profile = None
    try:
        profile = load_profile(manifest.profile)
    except ProfileError:
        logger.info("profile %s is not a shipped one; using 1 thread by default", manifest.profile)
    wanted = threads or (profile.runtime.threads if profile else 1)
    with quiet_native_stderr():
        stats = measure_latency(
            {"model": (bundle / MODEL_FILE).read_bytes()},
            threads=host_threads(wanted),
            runs=runs,
            warmup=warmup,
            withhold_amx=profile is not None and withholds_amx(profile),
        )["model"]
    where = "host-measured" if profile is None or host_measured(profile) else "device-class host"
    t = Table(
        title=f"bench {manifest.name} v{manifest.version} ({manifest.profile}), {where} on {host_cpu(profile)}",
        title_justify="left",
    )
    for col in ("runtime", "threads", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ms", "fps (p50)"):
        t.add_column(col, justify="right")
    t.add_row(
        stats.backend,
        str(stats.threads),
        str(stats.runs),
        f"{stats.p50:.3f}",
        f"{stats.p90:.3f}",
        f"{stats.p99:.3f}",
        f"{stats.mean:.3f}",
        f"{1000.0 / stats.p50:.1f}" if stats.p50 > 0 else "-",
    )
    console.print(t)
