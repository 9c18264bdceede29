"""The update loop of `make demo` (examples/demo_loop.py, demo_summary.py), run as the demo runs it:
`edgegap broker` in its own process, an `edgegap-agent` process serving a signed v1 and following
a channel, `edgegap publish` of a signed v2, every update event up to probation_passed, `edgegap
fleet status`, a clean stop and the summary. The demo's own training and conversion steps are left
out (the kit's small bundles stand in for the detector's), so this takes seconds, not minutes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("amqtt")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from demo import run  # noqa: E402
from demo_kit import Demo  # noqa: E402
from demo_loop import UPDATE_EVENTS, step_broker, step_device, step_publish  # noqa: E402
from demo_summary import measure, read_jsonl, step_fleet, step_stop  # noqa: E402
from updates_kit import variant  # noqa: E402

from agent.bundle.signing import generate_keypair, load_private_key  # noqa: E402
from converter.zoo.detection_data import generate, write_folder  # noqa: E402

LOOP = [step_broker, step_device, step_publish, step_fleet, step_stop]


def loop_demo(tmp_path: Path, v2_key_dir: str = "keys") -> Demo:
    """A Demo as the earlier steps leave it: keys, a test split, v1 and a v2 signed by the key in
    v2_key_dir (the demo's own key unless told otherwise)."""
    private, public = generate_keypair(tmp_path / "keys")
    other = private if v2_key_dir == "keys" else generate_keypair(tmp_path / v2_key_dir)[0]
    demo = Demo(out=tmp_path / "out")
    demo.out.mkdir()
    test = tmp_path / "test"
    write_folder(test, list(generate("test", 20, seed=0, size=96)))
    demo.files.update(public_key=public, private_key=private, detection_test=test)
    v1 = variant("yolo", 1, tmp_path / "v1", load_private_key(private))
    v2 = variant("ssd_postprocess", 2, tmp_path / "v2", load_private_key(other))
    demo.detector_bundles["x86-avx2"] = v1.path
    demo.refreshed = v2.path
    return demo


def test_the_demo_loop_swaps_v2_in_through_the_embedded_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = loop_demo(tmp_path)
    assert run(demo, LOOP) == 0
    out = capsys.readouterr().out
    device = demo.device
    assert device.proc.returncode == 0  # stopped by SIGTERM, cleanly
    assert [k for k in UPDATE_EVENTS if k in device.feed.kinds(2)] == list(UPDATE_EVENTS)
    served = measure(read_jsonl(device.jsonl))
    assert served.lost_at_swap == 0 and served.after_swap_v1 == 0
    assert set(served.by_version) == {1, 2} and served.frames == sum(served.by_version.values())
    for text in ("broker listening on mqtt://127.0.0.1:", "published ", "demo-cam serves v2"):
        assert text in out
    assert "online" in out and "demo finished" in out
    assert "none lost" in out and "publish start → activated" in out


def test_a_failing_step_ends_the_demo_with_its_reason_and_stops_the_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = loop_demo(tmp_path, v2_key_dir="foreign")  # v2 signed by a key the device distrusts
    assert run(demo, LOOP) == 1
    out = capsys.readouterr().out
    assert "demo failed:" in out and "`edgegap publish` failed" in out
    assert demo.device.proc.poll() is not None  # the agent was stopped on the way out
