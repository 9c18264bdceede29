"""benchmarks/update.py --quick runs end to end: real bundles, mosquitto, agent processes, a fleet
of four. Only that it finishes and prints its figures is checked; the timings are not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import _mosquitto_binary

ROOT = Path(__file__).resolve().parents[1]


def test_update_benchmark_quick_run_prints_its_ratios(tmp_path: Path) -> None:
    if _mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    pytest.importorskip("tensorflow")  # the benchmark converts its models once
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "update.py"), "--quick"]
        + ["--cache", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert lines[-1].startswith("longest gap across the swap, 30MB, interpreter / weight cache")
    assert lines[-2].startswith("longest gap across the swap, 4MB, interpreter / weight cache")
    link = "publish-to-active / raw transfer over a 100 Mbit/s link per client"
    assert lines[-3].startswith(f"{link}, 30MB")
    assert lines[-4].startswith(f"{link}, 4MB")
    assert lines[-5].startswith("publish-to-active / raw transfer, 30MB")
    assert lines[-6].startswith("publish-to-active / raw transfer, 4MB")
    assert lines[-7].startswith("fleet / one agent, 4 agents")
    for arm in ("weight cache", "interpreter"):
        assert any(line.startswith(f"frames lost during an update (publish .. activated + 1 s), {arm}")
                   for line in lines)  # fmt: skip
    assert any(line.startswith("agent RSS across 12 swaps") for line in lines)
    for model in ("4MB", "30MB"):
        assert any(line.startswith(f"where a {model} update goes, weight cache") for line in lines)
    assert any("4/4 agents activated the signed sha256; TensorFlow loaded in 0" in line
               for line in lines)  # fmt: skip
