"""The demo's last part: the loop closed from what devices see, in its short form.

It runs benchmarks/refresh.py with few images and epochs: two devices serve v1 on a video of
domain b (the drift), the canary captures what confuses it, `edgegap collect` gathers the
captures, `edgegap relabel` pseudo-labels them, `edgegap refresh` fine-tunes, gates and publishes
to the canary stage, and the rollout promotes it to the stable device; a refresh made from
shuffled labels is stopped. The benchmark's own settings run the full-size loop (docs/refresh.md).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from demo_kit import ROOT, Demo, DemoError, console, heading

SHORT = ("--captures", "40", "--video", "120", "--holdout", "60", "--epochs", "2")


def step_closed_loop(demo: Demo) -> None:
    heading("13. The loop closed: capture, collect, relabel, refresh, canary, promote")
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        console.print(
            "[yellow]skipped: this part runs its own mosquitto (apt-get install mosquitto)[/]"
        )
        return
    script = ROOT / "benchmarks" / "refresh.py"
    cmd = [sys.executable, str(script), *SHORT, "--work", str(demo.out / "closed-loop")]
    console.print(f"[dim]$ python {shlex.join([str(script.relative_to(ROOT)), *cmd[2:]])}[/]")
    code = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    if code:
        raise DemoError(f"the closed loop failed (exit {code}); its lines above say where")
