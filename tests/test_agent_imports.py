"""The agent must install and run on a device without TensorFlow or the converter."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import agent

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'converter', 'tf_keras'):
            raise ImportError('blocked in this test: ' + name)
        return None
sys.meta_path.insert(0, Block())
import importlib, pkgutil, agent
mods = ['agent'] + [m.name for m in pkgutil.walk_packages(agent.__path__, 'agent.') if not m.name.endswith('__main__')]
for m in mods:
    importlib.import_module(m)
from agent.runtime import get_backend
b = get_backend()
assert b.name != 'tf.lite', b.name
print(len(mods))
"""


def test_every_agent_module_imports_without_tensorflow() -> None:
    res = subprocess.run(
        [sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    expected = 1 + sum(
        1
        for m in pkgutil.walk_packages(agent.__path__, "agent.")
        if not m.name.endswith("__main__")
    )
    assert int(res.stdout.strip()) == expected


def test_device_install_does_not_pull_tensorflow() -> None:
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    device = cfg["options"]["install_requires"].lower()
    assert "tensorflow" not in device and "keras" not in device
    assert "tensorflow" in cfg["options.extras_require"]["host"].lower()
