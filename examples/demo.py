"""The edgegap demo, run by `make demo`: convert models for two devices, serve one, update it live.

Part one trains a digits CNN, converts it for two profiles, and verifies the bundles. Part two
takes the reference SSD detector (committed weights, or retrained with --train-detector),
converts it for the same profiles and compares float and int8 mAP. Part three is the update
loop: a broker (`edgegap broker`, or yours with --broker), a device (`edgegap-agent`) serving
the detector as v1 on a looped video, a refreshed detector fine-tuned on fresh data and
published as v2 (`edgegap publish`), swapped in live while the device serves, the fleet's view
(`edgegap fleet status`), and what the device served across the swap. Part four closes the
loop in short: captures from a drifted camera, relabelled, a refresh gated and rolled out
through a canary (demo_closed_loop.py).

Each step is a function taking the shared Demo state (demo_kit.py); STEPS lists them in order.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from demo_closed_loop import step_closed_loop
from demo_kit import ROOT, Demo, DemoError, console, edgegap, heading
from demo_loop import step_broker, step_device, step_publish
from demo_refresh import step_refresh
from demo_summary import step_fleet, step_stop

logger = logging.getLogger(__name__)

PROFILES = ("x86-avx2", "raspberry-pi-4")


def step_train(demo: Demo) -> None:
    """Train the digits CNN on scikit-learn's bundled digits; write the model and its data."""
    from converter.zoo.digits import CLASS_NAMES, train_digits_cnn, write_image_folder

    heading("1. Train a small CNN on real data (scikit-learn digits)")
    t0 = time.perf_counter()
    model, data = train_digits_cnn(epochs=3 if demo.quick else 8)
    x_test = data.test_x.astype(np.float32) / 255.0
    accuracy = float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == data.test_y))
    model_path = demo.out / "digits.keras"
    model.save(model_path)
    calib = write_image_folder(
        data.train_x[:200], data.train_y[:200], demo.out / "data" / "calibration"
    )
    val = demo.out / "data" / "validation.npz"
    np.savez(val, x=data.test_x, y=data.test_y)
    labels = demo.out / "data" / "labels.txt"
    labels.write_text("\n".join(CLASS_NAMES) + "\n")
    demo.files.update(model=model_path, calibration=calib, validation=val, labels=labels)
    console.print(
        f"trained {model.count_params():,} weights in {time.perf_counter() - t0:.1f} s; "
        f"held-out accuracy {accuracy:.2%} on {len(data.test_y)} digits"
    )
    console.print(
        f"model: {model_path}; calibration images: {calib}/<digit>/*.png; validation: {val}"
    )


def step_keys(demo: Demo) -> None:
    heading("2. Signing keys")
    keys = demo.out / "keys"
    edgegap("keys", "generate", "--out", keys, "--force")
    demo.files.update(private_key=keys / "edgegap.key", public_key=keys / "edgegap.pub")


def step_convert(demo: Demo) -> None:
    """Convert for each profile through the pipeline (what `edgegap convert` runs), then compare."""
    from converter.pipeline import ConvertOptions, convert
    from converter.report import comparison_table, render
    from firmware_profiles import load_profile

    for profile in PROFILES:
        heading(f"3. Convert for {profile}")
        bundle = demo.out / "bundles" / profile
        f = demo.files
        console.print(
            f"[dim]$ edgegap convert {f['model']} --profile {profile} --calibration {f['calibration']} "
            f"--validation {f['validation']} --labels {f['labels']} --sign-key {f['private_key']} "
            f"--name digits --version 1 --output {bundle}[/]"
        )
        result = convert(
            ConvertOptions(
                model=f["model"],
                profile=load_profile(profile),
                calibration=f["calibration"],
                validation=f["validation"],
                labels=f["labels"],
                sign_key=f["private_key"],
                name="digits",
                version=1,
                output=bundle,
            )
        )
        console.print(render(result))
        demo.results.append(result)
        demo.bundles[profile] = bundle
    heading("Report")
    console.print(comparison_table(demo.results))


def step_verify(demo: Demo) -> None:
    heading("4. Verify the bundles as a device would")
    for bundle in demo.bundles.values():
        edgegap("verify", bundle, "--key", demo.files["public_key"])


def step_detector(demo: Demo) -> None:
    """Convert the reference detector for each profile and compare float and int8 mAP."""
    from converter.tasks.detector_config import read_sidecar
    from converter.zoo.detection_data import generate, write_folder

    heading("5. The reference object detector")
    model = ROOT / "converter" / "zoo" / "weights" / "detector.keras"
    if demo.train_detector:
        model = demo.out / "detector.keras"
        edgegap(
            "zoo", "train-detector", "--output", model, *(["--epochs", "2"] if demo.quick else [])
        )
    else:
        console.print(f"using the committed weights {model} (retrain them with --train-detector)")
    data = demo.out / "detection"
    calib, test = data / "calibration", data / "test"
    size = read_sidecar(model)[0].input_size
    write_folder(calib, list(generate("train", 200, seed=0, size=size)))
    write_folder(test, list(generate("test", 200, seed=0, size=size)))
    demo.files.update(detector=model, detection_test=test)
    for profile in PROFILES:
        bundle = demo.out / "bundles" / f"detector-{profile}"
        edgegap(
            "convert",
            model,
            "--profile",
            profile,
            "--calibration",
            calib / "images",
            "--validation",
            test,
            "--sign-key",
            demo.files["private_key"],
            "--name",
            "detector",
            "--version",
            1,
            "--output",
            bundle,
        )
        demo.detector_bundles[profile] = bundle
    heading("6. Float against int8 on the held-out test split")
    edgegap("eval", model, *demo.detector_bundles.values(), "--data", test)


STEPS: list[Callable[[Demo], None]] = [
    step_train,
    step_keys,
    step_convert,
    step_verify,
    step_detector,
    step_broker,
    step_device,
    step_refresh,
    step_publish,
    step_fleet,
    step_stop,
    step_closed_loop,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=Path("demo-output"), help="Where everything is written."
    )
    parser.add_argument("--quick", action="store_true", help="Fewer training epochs and steps.")
    parser.add_argument(
        "--train-detector",
        action="store_true",
        help="Retrain the reference detector (about 10 minutes).",
    )
    parser.add_argument(
        "--broker",
        metavar="URL",
        help="Use this MQTT broker (mqtt://host:1883) instead of starting `edgegap broker`.",
    )
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    demo = Demo(
        out=args.output.resolve(),
        quick=args.quick,
        train_detector=args.train_detector,
        broker=args.broker,
    )
    return run(demo, STEPS)


def run(demo: Demo, steps: list[Callable[[Demo], None]]) -> int:
    """Run the steps in order; any failure ends the demo with its reason and exit code 1."""
    from agent.errors import EdgegapError
    from converter.loading import import_tf

    import_tf()  # once, quietly, before any step
    start = time.monotonic()
    took: list[str] = []
    try:
        with demo.cleanup:  # stops the agent and the broker, however the steps end
            for step in steps:
                t0 = time.monotonic()
                step(demo)
                took.append(f"{step.__name__.removeprefix('step_')} {time.monotonic() - t0:.0f} s")
    except (DemoError, EdgegapError) as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("[bold red]demo interrupted[/]")
        return 130
    console.print(f"[dim]time per step: {', '.join(took)}[/]")
    failed = [r.profile.name for r in demo.results if not r.passed]
    if failed:
        console.print(f"[bold red]demo failed: gates failed for {', '.join(failed)}[/]")
        return 1
    console.print(
        f"[green]demo finished in {time.monotonic() - start:.0f} s; everything is in {demo.out}[/]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
