"""edgegap host side: prune, quantize, verify, sign and publish models for device profiles."""

from __future__ import annotations
