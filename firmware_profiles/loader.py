"""Find, read and validate device profiles: the shipped YAML files, or a user's own file."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from pydantic import ValidationError

from firmware_profiles.schema import Profile

logger = logging.getLogger(__name__)

PROFILE_DIR = Path(__file__).resolve().parent


class ProfileError(ValueError):
    """A profile that cannot be found or does not validate. The message is meant for people."""


def shipped_profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _format_validation(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: {where}: {e['msg']}{shown}")
    return "; ".join(lines)


def parse_profile(text: str, source: str = "<profile>") -> Profile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a YAML mapping, got {type(data).__name__}")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format_validation(source, exc)) from exc


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a shipped profile by name, or a user's profile from a .yaml/.yml path."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ProfileError(f"profile file not found: {path}")
        return parse_profile(path.read_text(encoding="utf-8"), str(path))
    shipped = PROFILE_DIR / f"{text_name}.yaml"
    if not shipped.is_file():
        known = ", ".join(shipped_profile_names())
        raise ProfileError(
            f"unknown profile {text_name!r}; known profiles: {known} (or give a path to a .yaml file)"
        )
    return parse_profile(shipped.read_text(encoding="utf-8"), shipped.name)


def list_profiles() -> list[Profile]:
    return [load_profile(n) for n in shipped_profile_names()]
