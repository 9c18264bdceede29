"""JSON objects from bytes that came from a file or the network: the size is bounded first."""

from __future__ import annotations

import json
from typing import Any


def parse_object(raw: bytes, limit: int, what: str) -> dict[str, Any]:
    """raw as a JSON object of at most limit bytes; ValueError says which of the three it is not."""
    if len(raw) > limit:
        raise ValueError(f"{what} is {len(raw)} bytes, over the {limit}-byte limit")
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a JSON object")
    return obj
