"""Device profiles: one YAML file per device class, validated by a pydantic schema."""

from __future__ import annotations

from firmware_profiles.loader import (
    PROFILE_DIR,
    ProfileError,
    list_profiles,
    load_profile,
    parse_profile,
    shipped_profile_names,
)
from firmware_profiles.schema import IODtype, Profile, QuantScheme

__all__ = [
    "PROFILE_DIR",
    "IODtype",
    "Profile",
    "ProfileError",
    "QuantScheme",
    "list_profiles",
    "load_profile",
    "parse_profile",
    "shipped_profile_names",
]
