"""What a new user meets first: start-up errors come before slow work, and warnings are honest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_agent_kit import cached_bundle, write_video


def agent_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_a_missing_video_is_reported_before_the_model_is_loaded(tmp_path: Path) -> None:
    """The bundle path is bad too: the source is checked first, so the video is what is named."""
    out = agent_cli(
        "run", "--bundle", str(tmp_path / "no-bundle"), "--source", str(tmp_path / "none.avi"),
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode != 0
    assert "video file not found" in out.stderr and "bundle" not in out.stderr.lower(), out.stderr


def test_serving_unsigned_warns_and_quiet_hides_native_log_lines(tmp_path: Path) -> None:
    bundle = cached_bundle("ssd_postprocess").path
    video = write_video(tmp_path / "clip.avi", 3)
    loud = agent_cli("run", "--bundle", str(bundle), "--source", str(video), cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert "signature is not checked" in loud.stderr
    assert "INFO: Created TensorFlow Lite" in loud.stderr  # LiteRT's own line, at INFO
    quiet = agent_cli("-q", "run", "--bundle", str(bundle), "--source", str(video), cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "signature is not checked" in quiet.stderr  # a warning still shows with -q
    assert "INFO" not in quiet.stderr, quiet.stderr  # nor LiteRT's native "INFO: Created ..."
