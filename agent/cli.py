"""The `edgegap-agent` device daemon command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from agent.errors import EX_CONFIG, EdgegapError

logger = logging.getLogger(__name__)

# Flag name -> dotted config key. Every key a device usually sets can be given either way.
FLAG_KEYS = {
    "bundle": "bundle.path",
    "trusted_key": "bundle.trusted_keys",
    "golden": "bundle.golden",
    "source": "source.uri",
    "source_kind": "source.kind",
    "loop": "source.loop",
    "rate": "source.rate",
    "fps": "source.fps",
    "backend": "runtime.backend",
    "threads": "runtime.threads",
    "score_threshold": "detection.score_threshold",
    "max_detections": "detection.max_detections",
    "top_k": "detection.top_k",
    "broker": "mqtt.broker",
    "username": "mqtt.username",
    "password_file": "mqtt.password_file",
    "ca_file": "mqtt.tls.ca_file",
    "topic_prefix": "mqtt.topic_prefix",
    "device_id": "device_id",
    "fleet": "fleet",
    "publish": "publish.mode",
    "publish_interval": "publish.interval_s",
    "jsonl": "outputs.jsonl",
    "annotate_dir": "outputs.annotated_dir",
    "annotate_every": "outputs.annotated_every",
    "metrics_port": "metrics.port",
    "metrics_bind": "metrics.bind",
    "preview_port": "preview.port",
    "preview_bind": "preview.bind",
    "max_frames": "pipeline.max_frames",
    "channel": "updates.channel",
    "capture": "capture.enabled",
    "state_dir": "updates.state_dir",
}


def permanent_errors() -> tuple[type[BaseException], ...]:
    """Errors a restart will not fix: systemd is told so by exit code 78 (no crash loop)."""
    from agent.bundle.loading import BundleError
    from agent.bundle.signing import SignatureError
    from agent.config import ConfigError
    from agent.decoders.base import DecoderError
    from agent.runtime import BackendUnavailable, ModelLoadError
    from agent.sources.readers import SourceError

    return (
        BundleError,
        ConfigError,
        DecoderError,
        BackendUnavailable,
        ModelLoadError,
        SignatureError,
        SourceError,
    )


class PermanentError(click.ClickException):
    """One `Error:` line, and exit code 78: the service manager should not restart."""

    exit_code = EX_CONFIG


class Group(click.Group):
    """Turns errors meant for people into a one-line message; exit 78 when a restart will not help."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except EdgegapError as exc:
            if isinstance(exc, permanent_errors()):
                raise PermanentError(str(exc)) from exc
            raise click.ClickException(str(exc)) from exc


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v debug).")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
@click.version_option(package_name="edgegap")
def cli(verbose: int, quiet: bool) -> None:
    """edgegap-agent: serve a signed model bundle on this device with LiteRT.

    \b
    Examples:
      edgegap-agent run --config agent.yaml
      edgegap-agent run --bundle bundle/ --source video.mp4 --broker mqtt://localhost
      edgegap-agent validate-config agent.yaml
    """
    level = logging.WARNING if quiet else logging.INFO if verbose == 0 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


@cli.command()
@click.option(
    "-c", "--config", "config_file", type=click.Path(path_type=Path), help="YAML config file."
)
@click.option("--bundle", type=click.Path(path_type=Path), help="Bundle directory (bundle.path).")
@click.option(
    "--trusted-key",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Trusted Ed25519 public key (repeatable).",
)
@click.option(
    "--golden", type=click.Choice(["require", "check", "skip"]), help="Golden check policy."
)
@click.option(
    "--source",
    help="Camera index, video file, rtsp:// or http(s):// stream, image folder, or "
    "synthetic:640x480@30 (frames made in memory, paced like a camera).",
)
@click.option(
    "--source-kind",
    type=click.Choice(["auto", "camera", "file", "stream", "images", "synthetic"]),
    help="Force the source kind.",
)
@click.option("--loop/--no-loop", default=None, help="Loop a video file or image folder.")
@click.option(
    "--rate",
    type=click.Choice(["auto", "native", "max", "all"]),
    help="Pacing of files and folders.",
)
@click.option("--fps", type=float, help="Frame rate for native pacing when the source has none.")
@click.option("--backend", help="Runtime backend: litert, tflite-runtime or tf.lite.")
@click.option("--threads", type=int, help="Interpreter threads (default: the bundle profile's).")
@click.option("--score-threshold", type=float, help="Minimum detection score.")
@click.option("--max-detections", type=int, help="Most detections per frame.")
@click.option("--top-k", type=int, help="Classifiers: classes reported.")
@click.option(
    "--broker",
    help="mqtt://[user@]host[:port] or mqtts://...; password from EDGEGAP_MQTT_PASSWORD.",
)
@click.option("--username", help="Broker user name.")
@click.option(
    "--password-file", type=click.Path(path_type=Path), help="File holding the broker password."
)
@click.option("--ca-file", type=click.Path(path_type=Path), help="CA bundle for mqtts://.")
@click.option("--topic-prefix", help="Topic prefix (default edgegap/<fleet>).")
@click.option("--device-id", help="Device id used in topics (default: host name).")
@click.option("--fleet", help="Fleet name (default: default).")
@click.option(
    "--publish",
    type=click.Choice(["every", "interval", "on_change"]),
    help="MQTT publishing policy.",
)
@click.option("--publish-interval", type=float, help="Seconds between messages in interval mode.")
@click.option(
    "--jsonl", type=click.Path(path_type=Path), help="Append detections JSON lines to this file."
)
@click.option(
    "--annotate-dir",
    type=click.Path(path_type=Path),
    help="Write frames with boxes drawn to this folder.",
)
@click.option("--annotate-every", type=int, help="Write one annotated frame in this many.")
@click.option("--metrics-port", type=int, help="Serve Prometheus /metrics on this port.")
@click.option("--metrics-bind", help="Address for /metrics (default 0.0.0.0).")
@click.option("--preview/--no-preview", default=None, help="Serve the MJPEG preview page.")
@click.option("--preview-port", type=int, help="Port of the preview page (implies --preview).")
@click.option("--preview-bind", help="Address for the preview (default 127.0.0.1).")
@click.option("--max-frames", type=int, help="Stop after this many frames (0: run until stopped).")
@click.option("--channel", help="Follow this model channel over MQTT (updates.channel).")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    help="Bundle store and staged downloads (updates.state_dir, default /var/lib/edgegap).",
)
@click.option(
    "--capture/--no-capture",
    default=None,
    help="Send the frames the model is unsure of to the host (capture.enabled; needs --broker).",
)
def run(config_file: Path | None, preview: bool | None, **flags: Any) -> None:
    """Serve a bundle on a camera, stream, video file or image folder.

    Every config key below can be given in the YAML file or as a flag; flags win.
    Exit codes: 0 done, 1 runtime failure (a restart may help; also frames failing for
    pipeline.exit_after_failed_s, or every frame failed), 78 bad config, bundle or source
    (a restart will not help).

    \b
    Examples:
      edgegap-agent run --config /etc/edgegap/agent.yaml
      edgegap-agent run --bundle bundle/ --source 0 --broker mqtt://pi@broker.local
      edgegap-agent run --bundle bundle/ --source clip.mp4 --rate all --jsonl out.jsonl
      edgegap-agent run --bundle bundle/ --source rtsp://cam/stream --preview-port 8090
    """
    from agent.app import run_agent
    from agent.config import load_config

    overrides = overrides_from_flags(flags)
    if preview is not None:
        overrides["preview.enabled"] = preview
    if flags.get("preview_port") is not None:
        overrides.setdefault("preview.enabled", True)
    if flags.get("metrics_port") is not None:
        overrides["metrics.enabled"] = True
    config = load_config(config_file, overrides)
    summary = run_agent(config)
    print_summary(summary)


def overrides_from_flags(flags: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None or value == ():
            continue
        key = FLAG_KEYS[name]
        out[key] = (
            [str(v) for v in value]
            if isinstance(value, tuple)
            else str(value)
            if isinstance(value, Path)
            else value
        )
    return out


def print_summary(summary: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    console.print(f"edgegap-agent: {summary.frames} frames, stopped by {summary.stopped_by}")
    table = Table("stage", "median ms")
    for stage, ms in summary.median_ms.items():
        table.add_row(stage, "-" if ms is None else f"{ms:.2f}")
    console.print(table)
    console.print(
        f"fps {summary.fps:.1f}  p99 total {summary.p99_total_ms} ms  dropped {summary.dropped}  "
        f"published {summary.published} (dropped {summary.publish_dropped})  "
        f"source reopened {summary.reconnects}x"
    )
    if summary.failed:
        console.print(
            f"failed frames (decoding or publishing raised; skipped, see the log): {summary.failed}"
        )
    captures = summary.extra.get("captures")
    if captures:
        console.print(
            f"captures sent {captures['sent']}  dropped {captures['dropped']}  "
            f"waiting {captures['waiting']}  held back by caps {captures['capped']}"
        )
    swap = "" if summary.color_swap == "none" else f", color swap {summary.color_swap}"
    console.print(f"backend {summary.backend} {summary.backend_version}{swap}")


@cli.command("validate-config")
@click.argument("config_file", type=click.Path(path_type=Path))
@click.option("--show", is_flag=True, help="Print the effective config, defaults filled in.")
def validate_config(config_file: Path, show: bool) -> None:
    """Check a config file: one `key.path: reason` line per problem, exit 78 if any.

    \b
    Examples:
      edgegap-agent validate-config /etc/edgegap/agent.yaml
      edgegap-agent validate-config agent.yaml --show
    """
    import yaml

    from agent.config import ConfigError, load_config

    try:
        config = load_config(config_file)
    except ConfigError as exc:
        click.echo(f"{config_file}: {len(exc.problems)} problem(s)", err=True)
        for line in exc.problems:
            click.echo(f"  {line}", err=True)
        sys.exit(EX_CONFIG)
    if show:
        click.echo(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), nl=False)
    else:
        click.echo(f"{config_file}: ok")


def main() -> None:
    cli(prog_name="edgegap-agent")
