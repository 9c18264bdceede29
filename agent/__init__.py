"""edgegap device agent: serves a signed model bundle with LiteRT, and keeps it fresh over MQTT.

This package never imports TensorFlow or the converter.
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"
