"""Native log lines (TensorFlow's and LiteRT's, written straight to fd 2) kept off a quiet terminal."""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

_NOISE = re.compile(
    r"^([IWE]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl|To enable the following instructions"
    r"|INFO: Created TensorFlow Lite|fully_quantize: |Estimated count of arithmetic ops"
    r"|(INFO|WARNING): \[[\w.]+:\d+\] |\u2514 Could not load shared library|\s*$)"
)


@contextmanager
def quiet_native_stderr(below: int = logging.INFO) -> Iterator[None]:
    """Keep TensorFlow's and LiteRT's native log lines (written to fd 2) off the terminal.

    Everything else written to stderr meanwhile (Python warnings, say) is replayed afterwards.
    Nothing is hidden when logging is at `below` or more verbose: INFO by default, so the agent
    shows the interpreter's one line at start-up; DEBUG for the chatty ones (LiteRT's
    CompiledModel lists every accelerator and plugin it tries, about twenty lines a model).
    """
    if logging.getLogger().isEnabledFor(below):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines = sink.read().decode(errors="replace").splitlines()
            kept = [ln for ln in lines if not _NOISE.match(ln)]
            if len(kept) < len(lines):
                logger.debug("native log lines hidden: %d", len(lines) - len(kept))
            if kept:
                os.write(2, ("\n".join(kept) + "\n").encode())
