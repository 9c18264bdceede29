"""`edgegap refresh`: fine-tune, convert, gate and publish a refreshed detector, once or watching."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from converter.commands.models import REGISTRY_OPTION
from converter.commands.mqtt_options import broker_options, resolve
from converter.console import console
from converter.params import PROFILE

if TYPE_CHECKING:
    from converter.refresh.loop import RefreshOutcome

logger = logging.getLogger(__name__)

DIR = click.Path(path_type=Path, file_okay=False)
MODEL = click.Path(path_type=Path, dir_okay=False)


@click.command("refresh")
@click.option("--student", type=MODEL, help="The deployed float model (.keras with sidecar); "
              "with --watch, default: the registry's newest published version.")  # fmt: skip
@click.option("--data", type=DIR, required=True, help="Capture folder (edgegap relabel DIR); "
              "with --watch, the folder edgegap collect adds to (relabelled in a copy).")  # fmt: skip
@click.option(
    "--holdout", type=DIR, required=True, help="Labelled held-out captures (COCO folder)."
)
@click.option(
    "--profile", type=PROFILE, required=True, help="Shipped profile NAME or a .yaml file."
)
@click.option("--channel", required=True, help="Channel to publish a refresh that passes to.")
@click.option("--old-holdout", type=DIR, help="Labelled held-out set of the old domain "
              "[default: 200 test images of the generated domain a].")  # fmt: skip
@click.option("--replay", type=DIR, help="Original training data to replay (COCO folder) "
              "[default: the generated domain a training split].")  # fmt: skip
@click.option("--teacher", type=MODEL, help="Teacher for distillation [default: the student].")
@click.option("--sign-key", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Ed25519 private key (edgegap keys generate).")  # fmt: skip
@REGISTRY_OPTION
@broker_options
@click.option("--epochs", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(1e-6, 1.0), default=5e-4, show_default=True)
@click.option("--replay-ratio", type=click.FloatRange(0, 10), default=2.0, show_default=True,
              help="Replay images per new image.")  # fmt: skip
@click.option("--calibration-samples", type=click.IntRange(2), default=200, show_default=True,
              help="Quantization calibration images: half captures, half replay images.")  # fmt: skip
@click.option("--min-gain", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="mAP@0.5 the refresh must gain on --holdout (0: any gain).")  # fmt: skip
@click.option("--prune", "do_prune", is_flag=True,
              help="Prune to the profile's pruning target again before quantizing.")  # fmt: skip
@click.option("--name", help="Bundle name [default: the deployed bundle's].")
@click.option("--stage", type=click.Choice(["canary", "stable"]), default="canary", show_default=True,
              help="First stage: canary waits for the staged rollout to promote or halt it "
              "(edgegap publish --stage canary); stable publishes to every device.")  # fmt: skip
@click.option("--window", type=click.FloatRange(1), default=60.0, show_default=True,
              help="Seconds every canary must stay within bounds before promotion.")  # fmt: skip
@click.option("--max-detections-change", type=click.FloatRange(0), default=3.0, show_default=True,
              help="Canary bound: detections per frame may change by this fraction of the "
              "baseline (a refresh is meant to find what the drift hid).")  # fmt: skip
@click.option("--max-wait", type=click.FloatRange(1), default=600.0, show_default=True,
              help="A rollout not promoted after this many seconds is halted.")  # fmt: skip
@click.option("--watch", is_flag=True, help="Keep running: refresh whenever --every new "
              "captures have arrived in --data (relabelled by --teacher first).")  # fmt: skip
@click.option("--every", type=click.IntRange(1), default=200, show_default=True,
              help="With --watch: new captures that start a refresh.")  # fmt: skip
@click.option("--interval", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="With --watch: seconds between looks at --data.")  # fmt: skip
@click.option("--schedule", type=click.FloatRange(1), help="With --watch: also refresh every "
              "this many seconds when any new capture arrived.")  # fmt: skip
@click.option("--rounds", type=click.IntRange(0), default=0, help="With --watch: stop after "
              "this many refreshes (0: never); exit 1 if one was rejected.")  # fmt: skip
@click.pass_context
def refresh_cmd(ctx: click.Context, **kwargs: Any) -> None:
    """Refresh the deployed detector from relabelled captures, gate it and publish it.

    Fine-tunes the float student on the labelled captures in --data mixed with a replay sample
    of its original training data, distilling from the teacher; converts and gates it as
    `edgegap convert` does; checks it against the deployed version on --old-holdout (may drop
    by the profile's max_accuracy_drop at most) and on --holdout (must gain); then signs it and
    publishes it to the channel's first stage: the canary group, promoted to the stable group
    by the staged rollout (or --stage stable). Every version, passed or rejected, goes to the registry. A
    rejected refresh exits 1 and publishes nothing.

    --every, --interval, --schedule and --rounds only apply with --watch; given without it they
    are a usage error.

    \b
    Examples:
      edgegap relabel captures/ --teacher deployed.keras
      edgegap refresh --student deployed.keras --data captures/ --holdout labelled/ \\
          --profile x86-avx2 --channel lobby-cam --broker mqtt://broker.lan --sign-key keys/edgegap.key
      edgegap refresh --stage stable --window 120 ...
      edgegap refresh --watch --every 300 --teacher big.keras --data captures/ --holdout labelled/ \\
          --profile x86-avx2 --channel lobby-cam --broker mqtt://broker.lan --sign-key keys/edgegap.key
    """
    _require_watch(ctx, kwargs)
    from converter.refresh.loop import RefreshOptions
    from converter.refresh.train import TrainSettings

    broker, topics = resolve(kwargs)
    k = kwargs
    opts = RefreshOptions(
        student=k["student"], data=k["data"], holdout=k["holdout"], profile=k["profile"],
        registry=k["registry"], channel=k["channel"], teacher=k["teacher"],
        old_holdout=k["old_holdout"], replay=k["replay"], sign_key=k["sign_key"],
        prune=k["do_prune"], min_gain=k["min_gain"], name=k["name"],
        calibration_samples=k["calibration_samples"],
        train=TrainSettings(epochs=k["epochs"], learning_rate=k["learning_rate"],
                            replay=k["replay_ratio"]),
        publish=_publisher(broker, topics, k),
    )  # fmt: skip
    if k["watch"]:
        from converter.refresh.watch import Watch, watch

        plan = Watch(k["every"], k["interval"], k["schedule"], k["rounds"])
        outcomes = watch(opts, plan, say=_say, show=lambda o: console.print(outcome_table(o)))
        rejected = [f"v{o.version.version}: {o.reason}" for o in outcomes if not o.passed]
        if rejected:
            raise click.ClickException(
                f"{len(rejected)} of {len(outcomes)} refreshes rejected: " + "; ".join(rejected)
            )
        return
    if opts.student is None:
        raise click.BadParameter("give the deployed float model", param_hint="--student")
    from converter.refresh.loop import refresh

    outcome = refresh(opts, say=_say)
    console.print(outcome_table(outcome))
    if not outcome.passed:
        raise click.ClickException(f"refresh v{outcome.version.version} rejected: {outcome.reason}")


WATCH_ONLY = ("every", "interval", "schedule", "rounds")


def _require_watch(ctx: click.Context, kwargs: dict[str, Any]) -> None:
    """A watch setting given for a one-shot refresh would be ignored: refuse it instead."""
    if kwargs["watch"]:
        return
    for name in WATCH_ONLY:
        if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT):
            raise click.UsageError(f"--{name} needs --watch (a one-shot refresh ignores it)", ctx)


def _say(text: str) -> None:
    console.print(f"[bold]refresh[/] {text}")


def _publisher(broker: Any, topics: Any, k: dict[str, Any]) -> Any:
    from converter.refresh.publish import Publisher, refresh_bounds

    bounds = refresh_bounds(k["window"], k["max_detections_change"])
    return Publisher(broker, topics, k["channel"], k["stage"], bounds, k["max_wait"])


def outcome_table(outcome: RefreshOutcome) -> Table:
    v, p = outcome.version, outcome.parent
    table = Table(title=f"Refresh v{v.version} (parent v{p.version}): "
                  + ("[green]passed[/]" if outcome.passed else "[red]rejected[/]"))  # fmt: skip
    for col in ("gate", "status", "value", "limit", "reason"):
        table.add_column(col)
    for g in outcome.gates:
        colour = "green" if g.status == "pass" else "red" if g.status == "fail" else "dim"
        table.add_row(g.name, f"[{colour}]{g.status}[/]", g.value, g.limit, g.reason)
    seconds = ", ".join(f"{k} {s:.0f} s" for k, s in outcome.seconds.items())
    table.caption = f"{seconds}; published: {v.published.get('where', 'no')}"
    return table
