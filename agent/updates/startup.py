"""Which bundle a device with a store serves when it starts.

The store's active bundle (after counting the start against it, so a crash-looping bundle falls
back to the last good one); one that no longer loads is rejected and the store rolls back; with
nothing usable in the store, the configured bundle (`bundle.path`), installed and activated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from agent.bundle.loading import MANIFEST_FILE, MODEL_FILE
from agent.config import AgentConfig, ConfigError
from agent.errors import EdgegapError
from agent.served import ServedModel
from agent.store import BundleStore, StoreError

logger = logging.getLogger(__name__)

MAX_FALLBACKS = 4


def open_store(config: AgentConfig) -> BundleStore:
    u = config.updates
    return BundleStore(u.state_dir, crash_limit=u.crash_limit)


def serve_from_store(
    store: BundleStore, config: AgentConfig, load: Callable[[Path], ServedModel]
) -> tuple[ServedModel, bool]:
    """The model to serve, and whether it still has to pass probation."""
    reason = store.note_start()
    if reason is not None:
        logger.error("starting from the last good bundle: %s", reason)
    for _ in range(MAX_FALLBACKS):
        path = store.active()
        if path is None:
            break
        sha = path.name
        try:
            served = load(path)
        except EdgegapError as exc:
            version = _version(store, sha)
            store.rejections.add(sha, version, f"does not load: {exc}"[:300])
            try:
                store.rollback()
            except StoreError:
                break
            continue
        logger.info(
            "serving %s v%d from the bundle store", served.manifest.name, served.manifest.version
        )
        return served, sha != store.sha("good")
    if config.bundle.path is None:
        raise ConfigError(
            [f"bundle.path: required: the bundle store {store.state_dir} has no usable bundle"]
        )
    served = load(config.bundle.path)
    folder = served.bundle.path
    store.install((folder / MANIFEST_FILE).read_bytes(), folder / MODEL_FILE)
    store.activate(served.manifest.model.sha256)
    logger.info(
        "installed %s v%d from %s into the store",
        served.manifest.name,
        served.manifest.version,
        folder,
    )
    return served, served.manifest.model.sha256 != store.sha("good")


def _version(store: BundleStore, sha: str) -> int:
    try:
        return store.manifest(sha).version
    except StoreError:
        return 0
