"""Sources and the grabber on real files, folders and an HTTP MJPEG stream made in the test."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from test_agent_kit import ManualClock, render_frame, write_images, write_video

from agent.config import Rate, ReconnectConfig, SourceConfig, SourceKind
from agent.outputs.preview import PreviewServer
from agent.sources.grabber import Grabber
from agent.sources.readers import (
    ImageFolderSource,
    SourceError,
    SourceLost,
    StreamSource,
    SyntheticSource,
    VideoFileSource,
    make_source,
    redact,
)


def wait_until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def grabber_for(uri: Path | str, rate: Rate, **kw: object) -> Grabber:
    source = make_source(SourceConfig(uri=str(uri), **kw))  # type: ignore[arg-type]
    return Grabber(
        source,
        rate,
        loop=bool(kw.get("loop", False)),
        reconnect=ReconnectConfig(initial_s=0.05, max_s=0.2),
    )


def drain(g: Grabber, limit: int = 1000) -> list[int]:
    seen = []
    while len(seen) < limit:
        f = g.next(timeout=5)
        if f is None:
            break
        seen.append(f.index)
    return seen


def test_source_kind_from_uri(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", 2)
    assert isinstance(make_source(SourceConfig(uri=str(video))), VideoFileSource)
    assert isinstance(make_source(SourceConfig(uri=str(tmp_path))), ImageFolderSource)
    assert isinstance(make_source(SourceConfig(uri="rtsp://cam/x")), StreamSource)
    assert make_source(SourceConfig(uri="0")).kind is SourceKind.CAMERA
    assert redact("rtsp://admin:secret@cam/x") == "rtsp://admin:***@cam/x"


def test_slow_consumer_sees_the_newest_frame(tmp_path: Path) -> None:
    """A fast source and a slow consumer: stale frames are dropped, the consumer gets the newest."""
    g = grabber_for(write_video(tmp_path / "v.avi", 40), Rate.MAX)
    g.start()
    first = g.next(timeout=10)
    assert first is not None
    wait_until(lambda: g.stats.read == 40)  # the consumer is "busy" while the source runs on
    newest = g.next(timeout=5)
    assert newest is not None and newest.index == 39
    assert g.stats.dropped == 40 - 2
    assert g.next(timeout=0.1) is None and g.done and g.error is None
    g.stop()


def test_a_slow_consumer_drops_and_counts_stale_frames(tmp_path: Path) -> None:
    """A consumer that takes a frame only after the source has read two more: every frame is
    either seen, in order, or counted as dropped."""
    g = grabber_for(write_video(tmp_path / "v.avi", 30), Rate.MAX)
    g.start()
    seen = []
    while (f := g.next(timeout=5)) is not None:
        seen.append(f.index)
        wait_until(lambda i=f.index: g.stats.read >= min(i + 3, 30))  # a slow model
    g.stop()
    assert seen == sorted(set(seen)) and seen[-1] == 29
    assert g.stats.dropped > 0
    assert len(seen) + g.stats.dropped == g.stats.read == 30


def test_lockstep_processes_every_frame_in_order(tmp_path: Path) -> None:
    g = grabber_for(write_video(tmp_path / "v.avi", 25), Rate.ALL)
    g.start()
    assert drain(g) == list(range(25))
    assert g.stats.dropped == 0 and g.error is None
    g.stop()


def test_loop_restarts_a_file_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    g = grabber_for(write_video(tmp_path / "v.avi", 4), Rate.ALL, loop=True)
    with caplog.at_level(logging.DEBUG, logger="agent.sources.grabber"):
        g.start()
        assert drain(g, limit=10) == list(range(10))
        g.stop()
    # a short clip or a small folder loops many times a second: one line, not one per pass
    looping = [r for r in caplog.records if "looping" in r.getMessage()]
    assert [r.levelno for r in looping[:2]] == [logging.INFO, logging.DEBUG]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "no readable frames|not a video"),
        (b"not a video at all" * 100, "no readable frames|not a video"),
    ],
)
def test_unreadable_video_is_a_clear_error(tmp_path: Path, content: bytes, reason: str) -> None:
    bad = tmp_path / "bad.avi"
    bad.write_bytes(content)
    g = grabber_for(bad, Rate.ALL)
    g.start()
    assert g.next(timeout=10) is None
    wait_until(lambda: g.done)
    assert isinstance(g.error, SourceError)
    assert str(bad) in str(g.error)
    import re

    assert re.search(reason, str(g.error))


def test_missing_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="video file not found"):
        VideoFileSource(SourceConfig(uri=str(tmp_path / "none.mp4"))).open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no images"):
        ImageFolderSource(SourceConfig(uri=str(tmp_path / "empty"))).open()


def test_image_folder_that_vanishes_mid_run(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "imgs", 6)
    g = grabber_for(folder, Rate.ALL)
    assert g.rate is Rate.ALL
    g.start()
    assert g.next(timeout=5) is not None
    shutil.rmtree(folder)
    drain(g)
    wait_until(lambda: g.done)
    assert isinstance(g.error, SourceLost) and "vanished" in str(g.error)


@pytest.fixture
def mjpeg_stream() -> Iterator[Callable[[int], PreviewServer]]:
    """Start an HTTP MJPEG stream (the agent's own preview server, fed generated frames)."""
    servers: list[PreviewServer] = []
    stop = threading.Event()

    def start(port: int = 0) -> PreviewServer:
        server = PreviewServer("127.0.0.1", port, max_fps=60)
        server.start()
        servers.append(server)

        def feed() -> None:
            i = 0
            while not stop.is_set() and not server._closing:
                server.update(render_frame(i), [])
                i += 1
                time.sleep(1 / 60)

        threading.Thread(target=feed, daemon=True).start()
        return server

    yield start
    stop.set()
    for s in servers:
        if not s._closing:
            s.close()


def test_stream_dropout_is_reopened_with_backoff(
    mjpeg_stream: Callable[[int], PreviewServer],
) -> None:
    server = mjpeg_stream(0)
    uri = f"http://127.0.0.1:{server.port}/stream.mjpg"
    g = grabber_for(uri, Rate.AUTO, open_timeout_s=2.0, read_timeout_s=1.0)
    assert g.rate is Rate.MAX
    g.start()
    assert g.next(timeout=10) is not None
    server.close()  # the camera goes away
    wait_until(lambda: g.stats.lost_since is not None)
    time.sleep(0.3)  # a few failed reopen attempts
    assert not g.done
    mjpeg_stream(server.port)  # ... and comes back on the same address
    wait_until(lambda: g.stats.reconnects >= 1)
    assert g.next(timeout=10) is not None
    assert g.stats.lost_since is None and g.error is None
    g.stop()


def test_stream_that_never_comes_back_gives_up_after_max_attempts(
    mjpeg_stream: Callable[[int], PreviewServer],
) -> None:
    server = mjpeg_stream(0)
    uri = f"http://127.0.0.1:{server.port}/stream.mjpg"
    source = make_source(SourceConfig(uri=uri, open_timeout_s=1.0, read_timeout_s=1.0))
    g = Grabber(
        source, Rate.MAX, reconnect=ReconnectConfig(initial_s=0.05, max_s=0.1, max_attempts=3)
    )
    g.start()
    assert g.next(timeout=10) is not None
    server.close()
    drain(g)
    assert g.done and isinstance(g.error, SourceLost)
    assert "did not come back after 3 attempts" in str(g.error)


def paced_grabber(path: Path, frames: int, fps: float) -> tuple[Grabber, ManualClock]:
    clock = ManualClock()
    source = make_source(SourceConfig(uri=str(write_video(path, frames, fps=fps))))
    return Grabber(source, Rate.NATIVE, clock=clock), clock


def test_a_paced_file_gives_each_frame_when_it_falls_due(tmp_path: Path) -> None:
    g, clock = paced_grabber(tmp_path / "v.avi", 4, fps=50.0)
    g.start()
    first = g.next(timeout=10)
    assert first is not None and first.index == 0 and first.captured == 0.0
    assert g.next(timeout=0.2) is None and not g.done  # frame 1 is due at 0.02 s
    for k in (1, 2, 3):
        clock.advance(0.02)
        f = g.next(timeout=10)
        assert f is not None and f.index == k and f.captured == pytest.approx(0.02 * k)
    clock.advance(0.02)  # the end of the file is found when a fifth frame would be due
    assert g.next(timeout=10) is None and g.done and g.stats.dropped == 0
    g.stop()


def test_a_paused_consumer_of_a_paced_file_gets_the_newest_frame(tmp_path: Path) -> None:
    """While the consumer is busy, the clip keeps its pace: frames that fell due meanwhile are
    read and dropped, and the consumer goes on from the newest."""
    g, clock = paced_grabber(tmp_path / "v.avi", 12, fps=50.0)
    g.start()
    assert (f := g.next(timeout=10)) is not None and f.index == 0
    clock.advance(0.1)  # five frame intervals
    wait_until(lambda: g.stats.read == 6)
    assert (f := g.next(timeout=10)) is not None and f.index == 5 and g.stats.dropped == 4
    clock.advance(0.02)
    assert (f := g.next(timeout=10)) is not None and f.index == 6
    g.stop()


def test_synthetic_source_makes_moving_frames_paced_at_its_fps() -> None:
    source = make_source(SourceConfig(uri="synthetic:64x48@50"))
    assert isinstance(source, SyntheticSource) and not source.live
    assert source.describe() == "synthetic 64x48@50" and source.fps == 50
    g = Grabber(source, Rate.AUTO)
    assert g.rate is Rate.NATIVE  # paced like a camera
    g.start()
    try:
        t0 = time.monotonic()
        frames = [g.next(timeout=5) for _ in range(26)]
        elapsed = time.monotonic() - t0
    finally:
        g.stop()
    assert all(f is not None and f.image.shape == (48, 64, 3) for f in frames)
    assert 0.4 <= elapsed < 2.0  # frame k is due k / 50 s after the start: 25 intervals
    indices = [f.index for f in frames if f is not None]
    assert indices == sorted(set(indices)) and indices[-1] < 40  # in order, hardly any dropped
    a, b = frames[0], frames[1]
    assert a is not None and b is not None and not np.array_equal(a.image, b.image)  # it moves
    grabs = sorted(f.grab_s for f in frames if f is not None)
    assert grabs[len(grabs) // 2] < 0.01  # the pacing wait is not counted as grab time


def test_synthetic_source_paced_drops_for_a_slow_reader_like_a_camera() -> None:
    g = Grabber(make_source(SourceConfig(uri="synthetic:64x48@100")), Rate.AUTO)
    g.start()
    try:
        first = g.next(timeout=5)
        time.sleep(0.2)  # ~20 frames come meanwhile; only the newest is kept
        later = g.next(timeout=5)
        assert first is not None and later is not None
        assert later.index - first.index >= 5 and g.stats.dropped >= 4
    finally:
        g.stop()


def test_synthetic_source_spec_and_kind() -> None:
    default = make_source(SourceConfig(uri="synthetic"))
    assert (default.width, default.height, default.fps) == (640, 480, 30.0)  # type: ignore[attr-defined]
    forced = make_source(SourceConfig(kind=SourceKind.SYNTHETIC, width=320, height=240, fps=5))
    assert forced.describe() == "synthetic 320x240@5"
    assert make_source(SourceConfig(uri="synthetic:@12.5")).fps == 12.5
    for bad in ("synthetic:640x480@0", "synthetic:4x4", "synthetic:big", "synthetic:640x@30"):
        with pytest.raises(SourceError, match="synthetic"):
            make_source(SourceConfig(uri=bad))
    unpaced = Grabber(make_source(SourceConfig(uri="synthetic:32x32@1")), Rate.ALL)
    unpaced.start()
    try:
        assert [unpaced.next(timeout=5) is not None for _ in range(20)] == [True] * 20
    finally:
        unpaced.stop()
