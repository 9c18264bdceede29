"""Sources and the grabber on real files, folders and an HTTP MJPEG stream made in the test."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_agent_kit import render_frame, write_images, write_video

from agent.config import Rate, ReconnectConfig, SourceConfig, SourceKind
from agent.outputs.preview import PreviewServer
from agent.sources.grabber import INLINE_AFTER, Grabber
from agent.sources.readers import (
    ImageFolderSource,
    SourceError,
    SourceLost,
    StreamSource,
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


def test_paced_source_with_slow_consumer_drops_and_counts(tmp_path: Path) -> None:
    g = grabber_for(write_video(tmp_path / "v.avi", 30, fps=200.0), Rate.NATIVE)
    g.start()
    seen = []
    while (f := g.next(timeout=5)) is not None:
        seen.append(f.index)
        time.sleep(0.03)  # a slow model
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


def test_loop_restarts_a_file(tmp_path: Path) -> None:
    g = grabber_for(write_video(tmp_path / "v.avi", 4), Rate.ALL, loop=True)
    g.start()
    assert drain(g, limit=10) == list(range(10))
    g.stop()


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


def test_quick_consumer_reads_inline_and_keeps_every_frame(tmp_path: Path) -> None:
    """A consumer idle when frames arrive reads them on its own thread: no hand-off, no drops."""
    g = grabber_for(write_video(tmp_path / "v.avi", 40, fps=100.0), Rate.NATIVE)
    g.start()
    seen, inline_seen = [], 0
    while (f := g.next(timeout=5)) is not None:
        seen.append(f.index)
        inline_seen += g.reading_inline
    g.stop()
    assert seen == list(range(40)) and g.stats.dropped == 0 and g.error is None
    assert g.stats.inline >= 40 - INLINE_AFTER - 2 and inline_seen >= g.stats.inline - 1
    assert g.done


def test_inline_reads_leave_the_model_input_to_the_consumer(tmp_path: Path) -> None:
    """The grabber thread prepares each frame's input; an inline read does not, so the consumer
    writes the input in place (Pipeline._prepare) instead of copying a prepared one."""
    source = make_source(SourceConfig(uri=str(write_video(tmp_path / "v.avi", 30, fps=100.0))))
    prepared_by: list[str] = []

    def prepare(image: object) -> tuple[str, str]:
        prepared_by.append(threading.current_thread().name)
        return "input", "transform"

    g = Grabber(source, Rate.NATIVE, prepare=prepare)
    g.start()
    on_grabber = inline = 0
    while (f := g.next(timeout=5)) is not None:
        if f.prepared is None:
            inline += 1
        else:
            on_grabber += 1
            assert f.prepared.tensor == "input" and f.prepared.by is prepare
    g.stop()
    assert inline == g.stats.inline >= 30 - INLINE_AFTER - 2 and on_grabber + inline == 30
    assert len(prepared_by) == on_grabber and threading.main_thread().name not in prepared_by


def test_consumer_falling_behind_hands_reads_back_to_the_grabber(tmp_path: Path) -> None:
    """Inline while quick; once frames keep the consumer busy, stale frames are dropped again."""
    g = grabber_for(write_video(tmp_path / "v.avi", 60, fps=50.0), Rate.NATIVE)
    g.start()
    seen = []
    while (f := g.next(timeout=5)) is not None:
        seen.append(f.index)
        if len(seen) == 20:
            assert g.reading_inline
        if len(seen) > 20:
            time.sleep(0.05)  # the model got slow: 2.5 frame intervals per frame
    g.stop()
    assert not g.reading_inline
    assert seen == sorted(set(seen)) and seen[-1] == 59
    assert g.stats.dropped > 0 and len(seen) + g.stats.dropped == g.stats.read == 60


@pytest.mark.parametrize("restart", [False, True])
def test_pause_catches_up_unless_pacing_restarts(tmp_path: Path, restart: bool) -> None:
    """A paused consumer of a paced file: the frames due meanwhile come at once (dropped if the
    consumer is slower than decoding), or, after restart_pacing(), the clip goes on at its pace."""
    g = grabber_for(write_video(tmp_path / "v.avi", 40, fps=50.0), Rate.NATIVE)
    g.start()
    first = [g.next(timeout=5) for _ in range(10)]
    time.sleep(0.4)  # 20 frame intervals
    if restart:
        g.restart_pacing()
    t0 = time.perf_counter()
    rest = drain(g)
    took = time.perf_counter() - t0
    g.stop()
    assert [f.index for f in first if f is not None] == list(range(10))
    assert rest[-1] == 39 and len(rest) + g.stats.dropped == 30
    if restart:  # 30 frames at 50 fps, none dropped: at least 0.58 s, however busy the machine
        assert rest == list(range(10, 40)) and took > 0.5


def test_inline_reads_can_be_turned_off(tmp_path: Path) -> None:
    source = make_source(SourceConfig(uri=str(write_video(tmp_path / "v.avi", 20, fps=100.0))))
    g = Grabber(source, Rate.NATIVE, inline=False)
    g.start()
    assert drain(g) == list(range(20))
    assert g.stats.inline == 0
    g.stop()


def test_live_stream_lost_during_inline_reads_is_reopened(
    mjpeg_stream: Callable[[int], PreviewServer],
) -> None:
    server = mjpeg_stream(0)
    uri = f"http://127.0.0.1:{server.port}/stream.mjpg"
    g = grabber_for(uri, Rate.AUTO, open_timeout_s=2.0, read_timeout_s=1.0)
    g.start()
    wait_for_inline = time.monotonic() + 20
    while not g.reading_inline:
        assert g.next(timeout=5) is not None
        assert time.monotonic() < wait_for_inline, "reads never moved inline"
    before = g.stats.inline
    assert g.next(timeout=5) is not None and g.stats.inline == before + 1
    server.close()
    wait_until(lambda: g.next(timeout=0.2) is None and g.stats.lost_since is not None)
    assert not g.reading_inline and not g.done
    mjpeg_stream(server.port)
    wait_until(lambda: g.stats.reconnects >= 1)
    assert g.next(timeout=10) is not None
    assert g.error is None
    g.stop()


def test_prewarm_runs_on_the_consumer_thread_before_inline_reads(tmp_path: Path) -> None:
    """Before each inline read of a paced file (at most once per frame) the prewarm function runs
    on the consumer's own thread; every frame still arrives, in order."""
    g = grabber_for(write_video(tmp_path / "v.avi", 30, fps=50.0), Rate.NATIVE)
    calls: list[tuple[str, int]] = []
    g.set_prewarm(lambda: calls.append((threading.current_thread().name, g.stats.read)), 0.002)
    g.start()
    seen = drain(g)
    g.stop()
    assert seen == list(range(30)) and g.stats.dropped == 0
    assert {name for name, _ in calls} == {threading.current_thread().name}
    before_frame = [read for _, read in calls]
    assert before_frame == sorted(set(before_frame))
    assert len(calls) <= g.stats.inline + 1  # + the read that found the end
    assert len(calls) >= g.stats.inline // 2 > 0


def test_prewarm_time_of_a_live_source_follows_its_steady_interval() -> None:
    """A live source's next frame is predicted from its measured interval; prewarming starts a
    quarter interval plus the lead ahead of it, and not at all while the interval is unsteady."""
    g = Grabber(make_source(SourceConfig(uri="rtsp://cam/x")), Rate.AUTO)
    g.set_prewarm(lambda: None, 0.002)
    assert g._prewarm_at() is None  # no interval measured yet
    t = 100.0
    for _ in range(10):
        g._note_arrival(t)
        t += 0.040
    last = t - 0.040
    at = g._prewarm_at()
    assert at is not None and at == pytest.approx(last + 0.75 * 0.040 - 0.002, abs=1e-6)
    for gap in (0.010, 0.070, 0.015, 0.060):  # frames arriving in bursts and gaps
        t += gap
        g._note_arrival(t)
    assert g._prewarm_at() is None
