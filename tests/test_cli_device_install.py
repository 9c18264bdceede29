"""The device install has no TensorFlow: host commands say what to install instead of a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

# Runs the CLI in a process where the host-only modules cannot be imported, as on a device.
WITHOUT_HOST = """
import sys
for name in ("tensorflow", "keras", "sklearn", "skimage"):
    sys.modules[name] = None  # import raises ModuleNotFoundError, as when not installed
from converter.cli import cli
cli(sys.argv[1:], prog_name="edgegap")
"""


def edgegap_without_host(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_HOST, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.parametrize(
    "args",
    [
        [
            "convert",
            "model.keras",
            "--profile",
            "x86-avx2",
            "--calibration",
            "data",
            "--output",
            "out",
        ],
        ["prune", "model.keras", "--channels", "0.5", "--output", "p.keras"],
        ["zoo", "make-dataset", "--output", "data"],
    ],
)
def test_host_commands_name_the_host_install(args: list[str], tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "model.keras", "w") as z:  # shaped like a .keras file
        z.writestr("config.json", "{}")
        z.writestr("metadata.json", "{}")
        z.writestr("model.weights.h5", b"")
    (tmp_path / "data").mkdir()
    args = [
        str(tmp_path / a) if a in ("model.keras", "out", "p.keras", "data") else a for a in args
    ]
    out = edgegap_without_host(*args)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'edgegap[host]'" in lines[0], out.stderr


def test_device_commands_work_without_the_host_install() -> None:
    out = edgegap_without_host("profiles", "list")
    assert out.returncode == 0, out.stderr
    assert "raspberry-pi-4" in out.stdout
