"""Staged rollout: a version goes to the canary group first and is promoted to the stable
group by the controller, or halted and rolled back (docs/protocol.md, "Staged rollout")."""

from converter.rollout.bounds import Bounds
from converter.rollout.controller import Controller, RolloutError
from converter.rollout.launch import roll_out, start_rollout, watch_rollout
from converter.rollout.record import DeviceState, RolloutRecord, RolloutState, read_record

__all__ = [
    "Bounds",
    "Controller",
    "DeviceState",
    "RolloutError",
    "RolloutRecord",
    "RolloutState",
    "read_record",
    "roll_out",
    "start_rollout",
    "watch_rollout",
]
