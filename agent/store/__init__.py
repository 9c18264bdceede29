"""The device's on-disk store: installed bundles with their pointers, and staged downloads.

Pure filesystem logic (no MQTT): `BundleStore` keeps bundles by sha256 and switches the active,
previous and good pointers atomically; `Staging` holds one download's chunks until the store
takes them. docs/protocol.md ("Pulling", "Activation, probation, rollback") says
how the agent uses them. In short:

- at start: `clean_staging(state, keep=<sha being downloaded or None>)`, then
  `store.note_start()` (logs and returns a reason if it fell back), then serve `store.active()`
  (None: start from the configured bundle; install and activate it if it should be kept);
- a release: skip it if `store.rejections.holds(sha, version)`; `Staging(state, blob, limits)`,
  `missing()`, `put()` each chunk, `store.install(manifest, staging.chunks())` (it checks the
  whole sha256), `staging.discard()`, `store.activate(sha)`;
- probation passed: `store.mark_good(sha)`, then `store.prune()`;
- probation failed: `store.rejections.add(sha, version, reason)`, then `store.rollback()`;
- a `rollback` command: `store.rollback()`; a `pin`: `store.activate(store.find_version(v))`.
"""

from agent.atomic import atomic_write
from agent.store.bundles import DEFAULT_CRASH_LIMIT, BundleStore, Pointer
from agent.store.files import StoreError
from agent.store.staging import Staging, clean_staging

__all__ = [
    "DEFAULT_CRASH_LIMIT",
    "BundleStore",
    "Pointer",
    "Staging",
    "StoreError",
    "atomic_write",
    "clean_staging",
]
