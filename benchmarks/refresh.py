"""The refresh loop on this machine, no human step: two devices (a canary that captures, and a
stable one) serve a domain-b video with the reference detector (v1) through a real mosquitto;
capture -> collect -> relabel -> refresh -> gates -> publish to canary -> promote to stable.
Then a bad refresh (the same captures, labels shuffled on purpose): the host's gates stop it,
and, forced past them onto the canary stage, the rollout's bounds are tried on it too.

    python benchmarks/refresh.py [--captures 300] [--epochs 3] [--holdout 200] [--work DIR]

Prints the time from the first capture to the refreshed model serving on the canary and on the
stable device, mAP@0.5 of the int8 bundles (LiteRT) before and after on held-out sets of both
domains, and every gate and rollout decision.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refresh_kit import (  # noqa: E402
    CANARY,
    ROOT,
    STABLE,
    collect,
    follow_events,
    start_device,
    start_mosquitto,
    write_video,
)

WEIGHTS = ROOT / "converter" / "zoo" / "weights" / "detector.keras"
FLEET, CHANNEL, PROFILE = "bench", "refresh", "x86-avx2"
WINDOW_S = 20.0


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def setup(work: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Holdouts of both domains (test split) and the device's video (domain-b train frames)."""
    from converter.zoo import detection_data as dd

    paths = {k: work / k for k in ("holdout_b", "holdout_a", "video_b", "registry", "calib_a")}
    dd.write_folder(paths["calib_a"], list(dd.generate("train", 200, size=224)))
    dd.write_folder(
        paths["holdout_b"], list(dd.generate("test", args.holdout, size=224, domain="b"))
    )
    dd.write_folder(paths["holdout_a"], list(dd.generate("test", args.holdout, size=224)))
    dd.write_folder(paths["video_b"], list(dd.generate("train", args.video, size=224, domain="b")))
    return paths


def deploy_v1(work: Path, registry: Path, key: Path, calibration: Path, validation: Path) -> Path:
    """The reference detector converted as v1 as it was deployed from the lab (calibrated on its
    own training data), signed, recorded in the registry as published."""
    from converter.pipeline import ConvertOptions, convert
    from converter.refresh.registry import Registry, Version, now
    from firmware_profiles import load_profile

    out = work / "v1"
    result = convert(ConvertOptions(
        model=WEIGHTS, profile=load_profile(PROFILE), calibration=calibration, validation=validation,
        output=out, sign_key=key, name="detector", version=1, force=True, latency_runs=20,
    ))  # fmt: skip
    record = Version(1, None, now(), "published", "", data={"trained on": "generated domain a"},
                     published={"where": "the devices' --bundle"})  # fmt: skip
    Registry(registry).add(record, WEIGHTS, out)
    say(f"v1: the reference detector, int8 for {PROFILE}, convert gates passed: {result.passed}")
    return out


def refresh_once(args: argparse.Namespace, paths: dict[str, Path], data: Path, url: str,
                 key: Path, student: Path = WEIGHTS) -> Any:  # fmt: skip
    from agent.updates.protocol import Topics
    from converter.broker_client import BrokerOptions
    from converter.refresh.loop import RefreshOptions, refresh
    from converter.refresh.publish import Publisher, refresh_bounds
    from converter.refresh.train import TrainSettings
    from firmware_profiles import load_profile

    publisher = Publisher(BrokerOptions(url=url), Topics.for_fleet(FLEET, None), CHANNEL,
                          "canary", refresh_bounds(WINDOW_S), max_wait_s=300)  # fmt: skip
    opts = RefreshOptions(
        student=student, data=data, holdout=paths["holdout_b"], old_holdout=paths["holdout_a"],
        profile=load_profile(PROFILE), registry=paths["registry"], channel=CHANNEL, sign_key=key,
        train=TrainSettings(epochs=args.epochs, learning_rate=args.learning_rate, replay=args.replay),
        publish=publisher,
    )  # fmt: skip
    return refresh(opts, say=lambda t: say(f"refresh: {t}")), publisher


def print_gates(title: str, outcome: Any) -> None:
    print(f"\n{title}: v{outcome.version.version} {outcome.version.status.upper()}")
    for g in outcome.gates:
        print(f"  {g.name:<16} {g.status:<5} {g.value}  (limit {g.limit}) {g.reason}")
    if outcome.version.published:
        p = outcome.version.published
        print(f"  rollout: {p.get('rollout', p.get('stage'))}: {p.get('reason')}")


def force_canary(registry: Path, version: int, publisher: Any) -> dict[str, Any]:
    """The bad candidate's bundle published to canary anyway (as if the host gates had let it
    through): what the rollout's bounds make of it."""
    from converter.refresh.registry import Registry

    bundle = Registry(registry).bundle(version)
    assert bundle is not None
    return dict(publisher(bundle))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captures", type=int, default=300, help="captures to collect")
    parser.add_argument("--video", type=int, default=400, help="frames of the device's video")
    parser.add_argument("--holdout", type=int, default=200, help="images per holdout")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--replay", type=float, default=2.0)
    parser.add_argument("--work", type=Path)
    return parser.parse_args()


def main() -> int:
    args = parse()
    from agent.bundle.signing import generate_keypair
    from converter.loading import import_tf
    from converter.refresh.captures import shuffle_labels
    from converter.refresh.relabel import relabel

    import_tf()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgegap-refresh-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with ExitStack() as stack:
        paths = setup(work, args)
        key, pub = generate_keypair(work / "keys")
        url = start_mosquitto(work, stack)
        events = follow_events(url, FLEET, stack)
        v1 = deploy_v1(
            work, paths["registry"], key, paths["holdout_b"] / "images", paths["holdout_b"]
        )
        video = write_video(paths["video_b"], work / "camera-b.avi")
        devices = {
            d: start_device(work, d, v1, video, url, FLEET, CHANNEL, pub, stack)
            for d in (CANARY, STABLE)
        }
        for d, dev in devices.items():
            events.wait("probation_passed", 1, 180, dev.alive, d)
        say(f"{CANARY} (canary group, capturing) and {STABLE} serve v1 on the domain-b video")
        data = work / "captures"
        first = collect(url, FLEET, data, args.captures, 600)
        say(
            f"collect: {args.captures} captures in {data} ({time.time() - first:.0f} s after the first)"
        )
        labelled = relabel(data, WEIGHTS)
        say(
            f"relabel: {labelled.confident} confident, {labelled.review} for review, {labelled.boxes} boxes"
        )
        good, publisher = refresh_once(args, paths, data, url, key)
        v2 = good.version.version
        active: dict[str, float] = {}
        if good.passed:
            for d, dev in devices.items():
                active[d] = (
                    float(events.wait("probation_passed", v2, 300, dev.alive, d)["ts"]) - first
                )
        bad_data = work / "captures-shuffled"
        shutil.copytree(data, bad_data)
        shuffle_labels(bad_data, seed=1)
        say("a bad refresh: the same captures with their labels shuffled on purpose")
        from converter.refresh.registry import Registry

        deployed = Registry(paths["registry"]).model(v2) if good.passed else WEIGHTS
        bad, _ = refresh_once(args, paths, bad_data, url, key, deployed)
        forced = (
            force_canary(paths["registry"], bad.version.version, publisher)
            if not bad.passed
            else {}
        )
        report(args, good, bad, forced, active, events)
    return 0 if good.passed and not bad.passed else 1


def report(args: argparse.Namespace, good: Any, bad: Any, forced: dict[str, Any],
           active: dict[str, float], events: Any) -> None:  # fmt: skip
    print_gates("good refresh", good)
    print_gates("bad refresh (labels shuffled)", bad)
    if forced:
        print(
            f"\nbad refresh forced onto the canary stage past the host gates: {forced.get('rollout')}: {forced.get('reason')}"
        )
        if forced.get("rollout") == "promoted":
            print(
                "  (a canary sees no labels: its bounds halt a model whose outputs move, as the "
                "shuffled one's did in longer runs; this one stayed close enough to the deployed "
                "model's, and the host's regression gates above are what rejected it)"
            )
    for v in (good.version.version, bad.version.version):
        for d in (CANARY, STABLE):
            print(f"device {d} v{v}: {', '.join(events.seen(v, d)) or 'no events'}")
    b0, b1 = good.deployed.new, good.candidate.new
    a0, a1 = good.deployed.old, good.candidate.old
    print(f"\nsteps of the good refresh (s): {good.seconds}")
    print(
        f"domain-a mAP@0.5 (int8, {args.holdout} test images): {a0:.4f} -> {a1:.4f} ({100 * (a1 - a0):+.1f} points; goal >= -1)"
    )
    print(
        f"domain-b mAP@0.5 (int8, {args.holdout} test images): {b0:.4f} -> {b1:.4f} ({100 * (b1 - b0):+.1f} points; goal >= +10)"
    )
    print(
        f"gate decisions: good {good.version.status} (promoted: {good.passed}), bad {bad.version.status}"
    )
    for d, s in active.items():
        print(
            f"time from the first capture to the refreshed model active on {d}: {s:.0f} s (goal <= 900 s)"
        )


if __name__ == "__main__":
    sys.exit(main())
