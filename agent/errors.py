"""The base of every error meant for a person rather than a traceback."""

from __future__ import annotations

EX_CONFIG = 78  # sysexits.h: a configuration problem that restarting will not fix


class EdgegapError(Exception):
    """A condition the user can act on: bad input, missing file, untrusted bundle. Printed in one line."""
