"""The device's on-disk store: installed bundles with their pointers, and staged downloads.

Pure filesystem logic (no MQTT): `BundleStore` keeps bundles by sha256 and switches the active,
previous and good pointers atomically; `Staging` holds one download's chunks until they are
assembled and verified. docs/protocol.md ("Pulling", "Activation, probation, rollback") says
how the agent uses them.
"""

from agent.store.bundles import DEFAULT_CRASH_LIMIT, BundleStore, Pointer
from agent.store.files import StoreError, atomic_write
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
