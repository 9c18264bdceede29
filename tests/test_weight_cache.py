"""Update loads over an XNNPACK weight cache built by a child process (agent.runtime.compiled):
real converted models in LiteRT's Interpreter and CompiledModel, compared output for output."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_agent_kit import cached_bundle

from agent.bundle.loading import MODEL_FILE, Bundle
from agent.config import AgentConfig
from agent.runtime import LoadedModel, compiled, get_backend, open_model
from agent.served import load_served_model

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    compiled.unavailable() is not None, reason=str(compiled.unavailable())
)


def _open(bundle: Bundle, cache_file: Path) -> LoadedModel:
    version = get_backend("litert").version
    return compiled.open_cached(bundle.model_bytes(), bundle.model_path, 1, cache_file, version)


def _outputs(model: LoadedModel, x: np.ndarray, written: bool = False) -> list[np.ndarray]:
    if written:
        model.write_input(lambda buf: np.copyto(buf, x))
    else:
        model.set_input(x)
    model.invoke()
    return [model.get(o.index) for o in model.outputs]


def _frame(model: LoadedModel, seed: int) -> np.ndarray:
    spec = model.inputs[0]
    rng = np.random.default_rng(seed)
    if spec.dtype == np.float32:
        return rng.random(spec.shape, dtype=np.float32)
    info = np.iinfo(spec.dtype)
    return rng.integers(info.min, info.max, spec.shape, endpoint=True).astype(spec.dtype)


@pytest.mark.parametrize("layout", ["ssd_postprocess", "yolo", "classification"])
def test_compiled_model_gives_the_interpreters_outputs(layout: str, tmp_path: Path) -> None:
    bundle = cached_bundle(layout)
    reference = open_model(bundle.model_bytes(), threads=1, backend="litert")
    cached = _open(bundle, tmp_path / "w.xnnpack")
    assert isinstance(cached, compiled.CompiledLoadedModel)
    assert (tmp_path / "w.xnnpack").stat().st_size > 0
    assert cached.inputs == reference.inputs and cached.outputs == reference.outputs
    # the model's own ops; the allocated interpreter lists XNNPACK's node as well
    assert cached.op_names() == [n for n in reference.op_names() if n != "DELEGATE"]
    for seed in range(3):
        x = _frame(reference, seed)
        want = _outputs(reference, x)
        for written in (False, True):
            got = _outputs(cached, x, written)
            assert [g.dtype for g in got] == [w.dtype for w in want]
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)


def test_a_missing_or_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    bundle = cached_bundle("yolo")
    cache_file = tmp_path / "w.xnnpack"
    x = _frame(open_model(bundle.model_bytes(), threads=1, backend="litert"), 7)
    want = _outputs(_open(bundle, cache_file), x)
    good = cache_file.read_bytes()
    for bad in (good[: len(good) // 3], b"\x5a" * len(good), b""):
        cache_file.write_bytes(bad)
        got = _outputs(_open(bundle, cache_file), x)
        assert cache_file.read_bytes() == good, "the child did not rebuild the cache"
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    cache_file.unlink()
    _open(bundle, cache_file)
    assert cache_file.read_bytes() == good


def test_a_failing_child_falls_back_to_the_interpreter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "bundle"
    shutil.copytree(cached_bundle("yolo").path, folder)
    sha = Bundle(folder, cached_bundle("yolo").manifest).manifest.model.sha256
    compiled.cache_path(folder, sha).mkdir()  # a folder where the cache file should go
    with caplog.at_level(logging.WARNING, logger="agent.served"):
        served = load_served_model(folder, AgentConfig(), [], weight_cache=True)
    assert not isinstance(served.model, compiled.CompiledLoadedModel)
    assert served.golden is not None and served.golden.passed
    assert "weight cache not used" in caplog.text


def test_load_served_model_uses_the_cache_named_by_sha_and_passes_golden(tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    shutil.copytree(cached_bundle("ssd_postprocess").path, folder)
    served = load_served_model(folder, AgentConfig(), [], weight_cache=True)
    plain = load_served_model(folder, AgentConfig(), [], weight_cache=False)
    assert isinstance(served.model, compiled.CompiledLoadedModel)
    assert not isinstance(plain.model, compiled.CompiledLoadedModel)
    sha = served.manifest.model.sha256
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["manifest.json", MODEL_FILE, f"weights-{sha}.xnnpack"]
    )
    assert served.golden is not None and plain.golden is not None
    assert served.golden.max_error == plain.golden.max_error


_OPEN_AND_RUN = """
import logging, sys
from pathlib import Path
import numpy as np
from agent.runtime import compiled, get_backend
logging.basicConfig(level=logging.INFO)
model_file = Path(sys.argv[1])
model = compiled.open_cached(model_file.read_bytes(), model_file, 1, Path(sys.argv[2]),
                             get_backend("litert").version)
spec = model.inputs[0]
model.set_input(np.zeros(spec.shape, spec.dtype))
model.invoke()
print("ran", file=sys.stderr, flush=True)
"""


def test_litert_accelerator_lines_stay_off_stderr_at_info(tmp_path: Path) -> None:
    """The agent logs at INFO by default: opening a model over the cache and running it, in a
    fresh process, must not print LiteRT's environment and accelerator lines (about twenty per
    model; -v shows them). Its two lines at exit remain."""
    bundle = cached_bundle("yolo")
    done = subprocess.run(
        [sys.executable, "-c", _OPEN_AND_RUN, str(bundle.model_path), str(tmp_path / "w.xnnpack")],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    ran = done.stderr.split("ran\n")[0]
    assert "Creating LiteRT environment" not in ran and "RegisterAccelerator" not in ran, ran


def test_a_child_started_ahead_builds_the_cache_and_one_left_waiting_exits_with_the_agent(
    tmp_path: Path,
) -> None:
    """The updater starts the child when a download begins; the build then hands it its job. A
    child nobody gave a job (the download was rejected, the agent stopped) exits when its stdin
    closes, as it does when the agent process goes away."""
    bundle = cached_bundle("classification")
    compiled.start_ahead()
    ahead = compiled._ahead
    assert ahead is not None and ahead.poll() is None, "no child waiting"
    compiled.start_ahead()
    assert compiled._ahead is ahead, "a second child started while one was waiting"
    model = _open(bundle, tmp_path / "w.xnnpack")
    assert ahead.returncode == 0, "the child started ahead did not do the build"
    assert compiled._ahead is None
    assert isinstance(model, compiled.CompiledLoadedModel)
    compiled.start_ahead()
    waiting = compiled._ahead
    assert waiting is not None and waiting.stdin is not None
    waiting.stdin.close()
    assert waiting.wait(timeout=60) == 0
    compiled.start_ahead()  # the next one starts anew
    assert compiled._ahead is not waiting
    compiled._ahead.stdin.close()  # type: ignore[union-attr]
    compiled._ahead.wait(timeout=60)  # type: ignore[union-attr]
