"""The device's on-disk store (agent/store): bundles, pointers, crash loops, staged downloads."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from agent.bundle.loading import MANIFEST_FILE, MODEL_FILE, load_bundle
from agent.bundle.manifest import Decoder, InputSpec, Manifest, ModelFile, OutputRole, OutputSpec
from agent.runtime.compiled import cache_path
from agent.store import BundleStore, Staging, StoreError, atomic_write, clean_staging
from agent.updates.protocol import Blob, Limits, cut


def make_bundle(seed: int, version: int = 1, size: int = 3000) -> tuple[Manifest, bytes]:
    """A manifest and model bytes that match; different seeds give different models."""
    model = random.Random(f"model {seed}").randbytes(size)
    manifest = Manifest(
        name="m",
        version=version,
        profile="x86-avx2",
        created="2026-01-01T00:00:00Z",
        task="classification",
        decoder=Decoder.CLASSIFICATION,
        model=ModelFile(sha256=hashlib.sha256(model).hexdigest(), size=len(model)),
        input=InputSpec(
            shape=[1, 8, 8, 1], dtype="int8", scale=0.004, zero_point=-128, mean=[0], std=[255]
        ),
        outputs=[
            OutputSpec(name="out", index=5, role=OutputRole.LOGITS, shape=[1, 3], dtype="int8")
        ],
        labels=["a", "b", "c"],
    )
    return manifest, model


def sha_of(model: bytes) -> str:
    return hashlib.sha256(model).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> BundleStore:
    return BundleStore(tmp_path / "state")


def _install(store: BundleStore, seed: int, version: int = 1) -> str:
    manifest, model = make_bundle(seed, version)
    path = store.install(manifest, model)
    assert path.name == manifest.model.sha256
    return path.name


# ---- install ------------------------------------------------------------------------------


def test_install_writes_a_loadable_bundle_and_is_idempotent(
    store: BundleStore, tmp_path: Path
) -> None:
    manifest, model = make_bundle(1)
    path = store.install(manifest.to_json().encode(), model)
    assert load_bundle(path).manifest == manifest
    assert store.install(manifest, model) == path
    model_file = tmp_path / "model.tflite"
    model_file.write_bytes(model)
    assert store.install(manifest, model_file) == path
    assert store.installed() == [path.name]
    assert not [p for p in store.bundles_dir.iterdir() if p.name.startswith(".")]


def test_install_from_a_file(store: BundleStore, tmp_path: Path) -> None:
    manifest, model = make_bundle(2)
    model_file = tmp_path / "staged.tflite"
    model_file.write_bytes(model)
    path = store.install(manifest, model_file)
    assert (path / MODEL_FILE).read_bytes() == model


def test_install_refuses_a_model_that_is_not_the_manifests(
    store: BundleStore, tmp_path: Path
) -> None:
    manifest, _ = make_bundle(1)
    _, other = make_bundle(2)
    with pytest.raises(StoreError, match="manifest says"):
        store.install(manifest, other)
    same_size_other = other[:-1] + bytes([other[-1] ^ 1])
    with pytest.raises(StoreError, match="sha256"):
        store.install(make_bundle(2)[0], same_size_other)
    model_file = tmp_path / "short.tflite"
    model_file.write_bytes(other[:100])
    with pytest.raises(StoreError, match="100 bytes"):
        store.install(manifest, model_file)
    with pytest.raises(StoreError, match="cannot install"):
        store.install(b"{not json", other)
    assert store.installed() == []
    assert list(store.bundles_dir.iterdir()) == []


def test_a_new_manifest_for_the_same_model_replaces_the_old(store: BundleStore) -> None:
    manifest, model = make_bundle(1, version=1)
    path = store.install(manifest, model)
    newer = manifest.model_copy(update={"version": 2})
    assert store.install(newer, model) == path
    assert store.manifest(path.name).version == 2
    assert store.find_version(2) == path.name
    assert store.find_version(1) is None


def test_a_corrupt_installed_model_is_reinstalled(store: BundleStore) -> None:
    manifest, model = make_bundle(1)
    path = store.install(manifest, model)
    (path / MODEL_FILE).write_bytes(bytes(len(model)))  # same size, wrong bytes
    store.install(manifest, model)
    assert load_bundle(path).model_bytes() == model


# ---- pointers -----------------------------------------------------------------------------


def test_activate_mark_good_rollback_and_reopen(store: BundleStore, tmp_path: Path) -> None:
    a, b, c = (_install(store, seed) for seed in (1, 2, 3))
    assert store.active() is None
    store.activate(a)
    store.mark_good(a)
    store.activate(b)
    assert (store.sha("active"), store.sha("previous"), store.sha("good")) == (b, a, a)
    store.activate(b)  # activating the active bundle changes nothing
    assert store.sha("previous") == a

    reopened = BundleStore(tmp_path / "state")
    assert reopened.active() == reopened.path(b)
    assert reopened.previous() == reopened.path(a)
    assert reopened.good() == reopened.path(a)

    assert reopened.rollback() == a  # an operator's rollback: b stays available as previous
    assert (reopened.sha("active"), reopened.sha("previous")) == (a, b)
    reopened.activate(c)
    reopened.rejections.add(c, 1, "probation failed: invoke error")
    assert reopened.rollback() == a  # a rejected bundle does not become previous
    assert reopened.sha("active") == a
    assert reopened.sha("previous") is None  # previous would be good, which is a itself
    assert not (tmp_path / "state" / "previous").exists()
    for name in ("active", "good"):
        assert (tmp_path / "state" / name).read_text() == f"{a}\n"


def test_rollback_with_nothing_to_go_back_to(store: BundleStore) -> None:
    with pytest.raises(StoreError, match="nothing to roll back to"):
        store.rollback()
    a = _install(store, 1)
    store.activate(a)
    with pytest.raises(StoreError, match="nothing to roll back to"):
        store.rollback()


def test_activate_refuses_what_is_not_installed(store: BundleStore) -> None:
    with pytest.raises(StoreError, match="not installed"):
        store.activate("0" * 64)
    with pytest.raises(StoreError, match="not a sha256"):
        store.activate("../../etc")


def test_prune_keeps_active_previous_good_and_keep(store: BundleStore) -> None:
    a, b, c, d, e = (_install(store, seed) for seed in range(1, 6))
    store.activate(a)
    store.mark_good(a)
    store.activate(b)
    store.activate(c)  # previous b, good a
    (store.bundles_dir / "stray.txt").write_text("x")
    for sha in (c, d):  # weight caches, as an update load leaves them (agent.runtime.compiled)
        cache_path(store.path(sha), sha).write_bytes(b"packed")
    removed = store.prune(keep=[e])
    assert removed == [d]
    assert sorted(store.installed()) == sorted([a, b, c, e])
    assert not store.path(d).exists() and cache_path(store.path(c), c).is_file()
    assert not (store.bundles_dir / "stray.txt").exists()
    assert store.prune() == [e]


@pytest.mark.parametrize(
    "content", [b"garbage\n", b"../x\n", b"../" * 30, b"A" * 64, b"\xff\xfe", b"x" * 5000]
)
def test_a_bad_pointer_is_ignored_and_active_falls_back(
    store: BundleStore, tmp_path: Path, content: bytes
) -> None:
    a, b = _install(store, 1), _install(store, 2)
    store.activate(a)
    store.mark_good(a)
    store.activate(b)
    (tmp_path / "state" / "active").write_bytes(content)
    assert store.sha("active") is None
    assert store.active() == store.path(a)  # good
    (tmp_path / "state" / "good").write_bytes(content)
    assert store.active() == store.path(a)  # previous
    (tmp_path / "state" / "previous").write_bytes(content)
    assert store.active() is None
    assert not (tmp_path / "x").exists()


def test_a_pointer_to_a_missing_or_half_written_folder_falls_back(store: BundleStore) -> None:
    a, b = _install(store, 1), _install(store, 2)
    store.activate(a)
    store.mark_good(a)
    store.activate(b)
    (store.path(b) / MANIFEST_FILE).unlink()
    assert store.active() == store.path(a)
    assert store.note_start() is None  # a is good: no count, and the active pointer is repaired
    assert store.sha("active") == a
    store.activate(a)
    assert store.active() == store.path(a)


def test_leftovers_of_interrupted_writes_are_removed_on_open(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "state")
    a = _install(store, 1)
    store.activate(a)
    half = store.bundles_dir / f".tmp-{'b' * 12}.xyz"
    half.mkdir()
    (half / MODEL_FILE).write_bytes(b"partial")
    (tmp_path / "state" / ".tmp-active.abc").write_text("f" * 64)
    reopened = BundleStore(tmp_path / "state")
    assert not half.exists()
    assert not (tmp_path / "state" / ".tmp-active.abc").exists()
    assert reopened.active() == reopened.path(a)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]


# ---- crash loops and rejections -----------------------------------------------------------


def test_a_crash_looping_bundle_falls_back_to_good_and_is_rejected(
    store: BundleStore, tmp_path: Path
) -> None:
    a, b = _install(store, 1), _install(store, 2, version=2)
    store.activate(a)
    store.mark_good(a)
    store.activate(b)
    assert store.note_start() is None
    assert BundleStore(tmp_path / "state").note_start() is None  # the count survives a restart
    reason = BundleStore(tmp_path / "state").note_start()
    assert reason == "crash loop: 3 starts without passing probation"
    assert store.sha("active") == a
    assert store.rejections.holds(b)
    assert store.rejections.holds(b, version=2)
    assert not store.rejections.holds(
        b, version=3
    )  # a newer release of the same model is tried again
    assert store.rejections.reason(b) == reason
    assert store.sha("previous") != b
    for _ in range(5):
        assert store.note_start() is None  # the good bundle never counts


def test_mark_good_stops_the_count(store: BundleStore) -> None:
    a, b = _install(store, 1), _install(store, 2)
    store.activate(a)
    store.mark_good(a)
    store.activate(b)
    store.note_start()
    store.note_start()
    store.mark_good(b)
    for _ in range(5):
        assert store.note_start() is None
    assert store.sha("active") == b


def test_activate_resets_the_count(store: BundleStore) -> None:
    a, b = _install(store, 1), _install(store, 2)
    store.activate(a)
    store.mark_good(a)
    store.activate(b)
    store.note_start()
    store.note_start()
    store.rollback()
    store.activate(b)
    assert store.note_start() is None
    assert store.note_start() is None
    assert store.note_start() is not None


def test_crash_loop_without_good_falls_back_to_previous_then_to_nothing(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "state", crash_limit=2)
    a, b = _install(store, 1), _install(store, 2)
    store.activate(a)
    store.activate(b)
    assert store.note_start() is None
    assert store.note_start() is not None
    assert store.sha("active") == a
    assert store.note_start() is None
    assert store.note_start() is not None  # a never passed probation either
    assert store.active() is None  # the agent starts from its configured bundle
    assert store.rejections.holds(a) and store.rejections.holds(b)


def test_rejections_are_bounded_and_survive_garbage(store: BundleStore, tmp_path: Path) -> None:
    for i in range(100):
        store.rejections.add(hashlib.sha256(str(i).encode()).hexdigest(), i, "é" * 1000)
    entries = json.loads((tmp_path / "state" / "rejected.json").read_text())
    assert len(entries) == 64
    assert store.rejections.holds(hashlib.sha256(b"99").hexdigest())
    assert not store.rejections.holds(hashlib.sha256(b"0").hexdigest())
    (tmp_path / "state" / "rejected.json").write_text("{garbage")
    assert not store.rejections.holds(hashlib.sha256(b"99").hexdigest())
    with pytest.raises(StoreError):
        store.rejections.add("../x", 1, "no")


# ---- staging ------------------------------------------------------------------------------


def _blob(
    size: int = 10_000, chunk_size: int = 1024, seed: int = 7
) -> tuple[bytes, Blob, list[bytes]]:
    data = random.Random(seed).randbytes(size)
    blob, chunks = cut(data, chunk_size)
    return data, blob, chunks


def _manifest_of(blob: Blob) -> Manifest:
    return make_bundle(1)[0].model_copy(
        update={"model": ModelFile(sha256=blob.sha256, size=blob.size)}
    )


def test_staging_out_of_order_then_the_store_takes_the_chunks(tmp_path: Path) -> None:
    data, blob, chunks = _blob()
    staging = Staging(tmp_path, blob)
    assert staging.missing() == list(range(blob.chunks))
    for index in reversed(range(blob.chunks)):
        staging.put(index, chunks[index])
    assert staging.missing() == []
    store = BundleStore(tmp_path)
    folder = store.install(_manifest_of(blob), staging.chunks())
    assert (folder / "model.tflite").read_bytes() == data
    staging.discard()
    assert not staging.dir.exists()


def test_staging_put_refuses_bad_chunks_before_writing(tmp_path: Path) -> None:
    _, blob, chunks = _blob()
    staging = Staging(tmp_path, blob)
    with pytest.raises(StoreError, match="sha256"):
        staging.put(0, chunks[1])
    with pytest.raises(StoreError, match="bytes"):
        staging.put(0, chunks[0][:-1])
    with pytest.raises(StoreError, match="out of range"):
        staging.put(blob.chunks, chunks[0])
    with pytest.raises(StoreError, match="out of range"):
        staging.put(-1, chunks[0])
    assert list(staging.dir.iterdir()) == []


def test_staging_resume_drops_torn_and_corrupt_chunks(tmp_path: Path) -> None:
    data, blob, chunks = _blob()
    first = Staging(tmp_path, blob)
    for index in (0, 2, 3, 5):
        first.put(index, chunks[index])
    (first.dir / "2").write_bytes(chunks[2][:100])  # torn
    (first.dir / "3").write_bytes(bytes(len(chunks[3])))  # corrupt, right length
    (first.dir / "007").write_bytes(chunks[7])  # not a name staging writes
    (first.dir / "99").write_bytes(b"x")  # out of range
    (first.dir / ".tmp-4.abc").write_bytes(chunks[4])  # an interrupted write
    resumed = Staging(tmp_path, blob)
    assert resumed.have() == {0, 5}
    assert sorted(p.name for p in resumed.dir.iterdir()) == ["0", "5"]
    for index in resumed.missing():
        resumed.put(index, chunks[index])
    assert b"".join(resumed.chunks()) == data


def test_staging_a_chunk_does_not_fsync_installing_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync per chunk cost ~8 ms (241 for a 30 MB model, benchmarks/update.py); a chunk
    a power cut leaves empty or torn is re-hashed on resume and fetched again (above), so only
    the model the store writes from them is made durable."""
    data, blob, chunks = _blob()
    staging = Staging(tmp_path, blob)
    staging.missing()
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    for index, chunk in enumerate(chunks):
        staging.put(index, chunk)
    assert synced == []
    assert Staging(tmp_path, blob).have() == set(range(blob.chunks))
    folder = BundleStore(tmp_path).install(_manifest_of(blob), staging.chunks())
    assert (folder / "model.tflite").read_bytes() == data
    assert len(synced) >= 1


def test_the_store_checks_the_whole_file_the_chunks_make(tmp_path: Path) -> None:
    _, blob, chunks = _blob()
    lying = blob.model_copy(update={"sha256": "f" * 64})  # chunk list consistent, total sha not
    staging = Staging(tmp_path, lying)
    for index, chunk in enumerate(chunks):
        staging.put(index, chunk)
    store = BundleStore(tmp_path)
    with pytest.raises(StoreError, match=r"sha256 .* the manifest says"):
        store.install(_manifest_of(lying), staging.chunks())
    assert store.installed() == []
    assert not [p for p in store.bundles_dir.iterdir()], "a half-written bundle folder is left"
    incomplete = Staging(tmp_path, blob)
    incomplete.put(0, chunks[0])
    with pytest.raises(StoreError, match="missing"):
        incomplete.chunks()


def test_staging_limits_apply_before_anything_is_created(tmp_path: Path) -> None:
    _, blob, _ = _blob(size=10_000, chunk_size=1024)
    with pytest.raises(StoreError, match="byte limit"):
        Staging(tmp_path, blob, Limits(max_model_bytes=9_999))
    with pytest.raises(StoreError, match="chunks, over"):
        Staging(tmp_path, blob, Limits(max_chunks=9))
    huge = blob.model_construct(**{**blob.model_dump(), "chunks": 10**9, "size": 10**12})
    with pytest.raises(StoreError):
        Staging(tmp_path, huge)
    evil = blob.model_construct(**{**blob.model_dump(), "sha256": "../" * 21 + "x"})
    with pytest.raises(StoreError, match="not a sha256"):
        Staging(tmp_path, evil)
    assert not (tmp_path / "staging").exists()


def test_clean_staging_keeps_only_the_current_download(tmp_path: Path) -> None:
    _, one, chunks_one = _blob(seed=1)
    _, two, chunks_two = _blob(seed=2)
    Staging(tmp_path, one).put(0, chunks_one[0])
    Staging(tmp_path, two).put(0, chunks_two[0])
    (tmp_path / "staging" / f"{one.sha256}.tflite").write_bytes(b"x")
    removed = clean_staging(tmp_path, keep=two.sha256)
    assert sorted(removed) == sorted([one.sha256, f"{one.sha256}.tflite"])
    assert [p.name for p in (tmp_path / "staging").iterdir()] == [two.sha256]
    assert Staging(tmp_path, two).have() == {0}


def test_a_full_disk_is_a_store_error_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, blob, chunks = _blob()
    staging = Staging(tmp_path, blob)
    store = BundleStore(tmp_path / "state")
    manifest, model = make_bundle(1)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_replace(src: str, dst: object) -> None:  # a chunk is not fsynced: its write fails
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    monkeypatch.setattr(os, "replace", full_replace)
    with pytest.raises(StoreError, match="staging a chunk failed: No space left on device"):
        staging.put(0, chunks[0])
    with pytest.raises(StoreError, match="installing a bundle failed"):
        store.install(manifest, model)
    monkeypatch.undo()
    assert list(staging.dir.iterdir()) == []
    assert list(store.bundles_dir.iterdir()) == []
    assert Staging(tmp_path, blob).have() == set()
