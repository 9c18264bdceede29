"""Which kept-channel multiple suits this CPU: int8 latency of one pruning ratio at several
`--round-to` values, against the dense model, interleaved in one run.

Int8 kernels work on channels in fixed-width tiles, so a layer left with 8 channels may cost what
it cost with 16. If a round-to of N keeps more MACs (more capacity for the fine-tune to use) at
the same latency as no rounding, prune with `--round-to N` on this kind of CPU. Run it on the
device class you target: tile widths differ between instruction sets. Weights are not
fine-tuned here; latency does not depend on them.

Usage:
  python benchmarks/channel_rounding.py [MODEL.keras] [--ratio 0.5] [--round-to 1,8,16,32]
                                        [--iterations 200] [--threads 1]

MODEL defaults to the reference detector. Ratios are printed last, absolute times beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converter.amx import WITHHOLD_HELP, amx_label, withhold_amx  # noqa: E402
from converter.pruning import count_macs, make_plan, rebuild  # noqa: E402
from converter.pruning.latency import interleaved_latency, to_int8_tflite  # noqa: E402

REFERENCE = ROOT / "converter" / "zoo" / "weights" / "detector.keras"


def _multiples(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("model", nargs="?", type=Path, default=REFERENCE)
    ap.add_argument("--ratio", type=float, default=0.5, help="Fraction of channels asked to go.")
    ap.add_argument(
        "--round-to", type=_multiples, default=[1, 8, 16, 32], help="Multiples to compare."
    )
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--withhold-amx", action="store_true", help=WITHHOLD_HELP)
    args = ap.parse_args()
    if args.withhold_amx:
        withhold_amx()
    if not args.model.is_file():
        ap.error(f"model not found: {args.model}")
    if not 0 < args.ratio < 1:
        ap.error(f"--ratio must be in (0, 1), got {args.ratio}")

    import keras

    dense = keras.models.load_model(args.model, compile=False)
    shape = tuple(int(d) for d in dense.inputs[0].shape[1:])
    calib = np.random.default_rng(0).uniform(0, 1, (8, *shape)).astype(np.float32)
    rows: list[tuple[str, float, int]] = [("dense", 0.0, count_macs(dense))]
    flats = [to_int8_tflite(dense, calib)]
    for n in args.round_to:
        plan = make_plan(dense, args.ratio, round_to=n)
        rows.append(
            (
                f"round-to {n}",
                1 - plan.kept_channels / max(plan.total_channels, 1),
                plan.predicted_macs,
            )
        )
        pruned = rebuild(plan)
        assert count_macs(pruned) == plan.predicted_macs
        flats.append(to_int8_tflite(pruned, calib))
    ms = interleaved_latency(flats, threads=args.threads, iterations=args.iterations)

    print(f"{args.model.name}, {args.ratio:.0%} of channels asked to go; int8, {args.threads} thread(s), {amx_label()}, "
          f"median of {args.iterations} interleaved invokes:")  # fmt: skip
    print(f"  {'':12} {'removed':>8} {'MACs':>10} {'int8 ms':>8}")
    for (name, removed, macs), t in zip(rows, ms, strict=True):
        print(f"  {name:12} {removed:8.1%} {macs / 1e6:8.1f} M {t:8.3f}")
    print()
    print("ratios (pruned/dense):")
    for (name, _, macs), t in zip(rows[1:], ms[1:], strict=True):
        print(f"  {name}: MACs ratio {macs / rows[0][2]:.3f}, int8 latency ratio {t / ms[0]:.3f}")


if __name__ == "__main__":
    main()
