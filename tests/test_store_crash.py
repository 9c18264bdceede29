"""Crash safety of the store with real processes: a child writing to the store is SIGKILLed at
random moments, and after each kill a fresh store must read a consistent state."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.bundle.loading import load_bundle
from agent.store import BundleStore, Staging
from agent.updates.protocol import cut

sys.path.insert(0, str(Path(__file__).parent))
from test_store import make_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KILLS = 20

BUNDLE_CHILD = """
import sys
from pathlib import Path
from agent.store import BundleStore
state, a, b, extra = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
store = BundleStore(state)
manifest, model = (extra / "manifest.json").read_bytes(), extra / "model.tflite"
c = store.install(manifest, model).name
print("ready", flush=True)
n = 0
while True:
    n += 1
    store.activate(a)
    store.mark_good(a)
    store.activate(b)
    store.note_start()
    store.rejections.add(c, n, f"try {n}")
    store.rollback()
    store.mark_good(b)
    store.install(manifest, model)
    store.prune()
"""

STAGING_CHILD = """
import json, random, sys
from pathlib import Path
from agent.store import Staging
from agent.updates.protocol import cut
state, data = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()
blob, chunks = cut(data, 16 * 1024)
print("ready", flush=True)
while True:
    staging = Staging(state, blob)
    order = staging.missing()
    random.shuffle(order)
    for index in order:
        staging.put(index, chunks[index])
    assert b"".join(staging.chunks()) == data
    staging.discard()
"""


def _kill_at_random(args: list[str], rng: random.Random, max_delay: float) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", *args], stdout=subprocess.PIPE, env=env, cwd=ROOT
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n", "the child did not start"
        time.sleep(rng.uniform(0.0, max_delay))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL, "the child stopped before it was killed"


def _check_bundle_state(state: Path, a: str, b: str, c: str) -> str:
    store = BundleStore(state)
    active = store.sha("active")
    assert active in (a, b), "the active pointer is torn or names something else"
    assert store.active() == store.path(active)
    load_bundle(store.path(active))  # complete: manifest parses, model hashes to it
    for pointer in ("previous", "good"):
        if (state / pointer).exists():
            assert store.sha(pointer) in (a, b), f"the {pointer} pointer is torn"  # type: ignore[arg-type]
    for entry in store.bundles_dir.iterdir():
        assert entry.name in (a, b, c), f"a leftover in bundles/: {entry.name}"
        load_bundle(entry)
    for name in ("rejected.json", "starts.json"):
        if (state / name).exists():
            assert isinstance(json.loads((state / name).read_text()), dict), f"{name} is torn"
    assert store.rejections.holds(c) == (state / "rejected.json").exists()
    return active


def test_bundle_pointers_survive_sigkill_at_random_moments(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = BundleStore(state)
    bundles = [make_bundle(seed, size=200_000) for seed in (1, 2, 3)]
    a, b = (store.install(m, model).name for m, model in bundles[:2])
    c_manifest, c_model = bundles[2]
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "manifest.json").write_bytes(c_manifest.to_json().encode())
    (extra / "model.tflite").write_bytes(c_model)
    c = c_manifest.model.sha256
    store.activate(a)
    rng = random.Random(19)
    seen = set()
    for _ in range(KILLS):
        _kill_at_random([BUNDLE_CHILD, str(state), a, b, str(extra)], rng, max_delay=0.15)
        seen.add(_check_bundle_state(state, a, b, c))
    assert seen == {a, b}, "the kills all landed at the same place in the loop"


def test_staged_chunks_survive_sigkill_at_random_moments(tmp_path: Path) -> None:
    data = random.Random(5).randbytes(40 * 16 * 1024 - 100)
    blob, _ = cut(data, 16 * 1024)
    source = tmp_path / "model.bin"
    source.write_bytes(data)
    state = tmp_path / "state"
    rng = random.Random(23)
    partial = 0
    for _ in range(KILLS):
        _kill_at_random([STAGING_CHILD, str(state), str(source)], rng, max_delay=0.15)
        staging = Staging(state, blob)
        have = staging.have()
        for index in have:
            chunk = (staging.dir / str(index)).read_bytes()
            assert hashlib.sha256(chunk).hexdigest() == blob.chunk_sha256[index]
        assert sorted(p.name for p in staging.dir.iterdir()) == sorted(str(i) for i in have)
        partial += 0 < len(have) < blob.chunks
        for index in staging.missing():  # the download resumes and completes from what was left
            staging.put(index, data[index * blob.chunk_size : (index + 1) * blob.chunk_size])
        assert b"".join(staging.chunks()) == data
    assert partial > 0, "no kill landed in the middle of a download"
