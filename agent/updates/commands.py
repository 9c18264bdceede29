"""Commands from devices/<id>/cmd, carried out on the updater thread (docs/protocol.md).

Each ends with one `command` event: ok true, or ok false with the reason, and a refused command
changes nothing. rollback and pin also report what they served (rolled_back, activated).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from agent.errors import EdgegapError
from agent.updates.checks import Rejected
from agent.updates.protocol import Command, EventKind, ProtocolError, parse_command

if TYPE_CHECKING:
    from agent.updates.updater import Updater

logger = logging.getLogger(__name__)


class Refused(EdgegapError):
    """A well-formed command that cannot be carried out now; str() is the reason."""


def run_command(updater: Updater, raw: bytes) -> None:
    try:
        cmd = parse_command(raw)
    except ProtocolError as exc:
        logger.warning("refused a command: %s", exc)
        updater.events.emit(EventKind.COMMAND, cmd=_name_of(raw), ok=False, reason=str(exc))
        return
    try:
        _carry_out(updater, cmd)
    except (Refused, Rejected) as exc:
        logger.warning("refused command %s: %s", cmd.name, exc)
        updater.events.emit(EventKind.COMMAND, cmd=cmd.name, ok=False, reason=str(exc))
        return
    updater.events.emit(EventKind.COMMAND, cmd=cmd.name, ok=True)


def _carry_out(updater: Updater, cmd: Command) -> None:
    if cmd.name == "set_threshold":
        assert cmd.value is not None
        _set_threshold(updater, cmd.value)
    elif cmd.name == "status":
        updater.link.publish_status()
    elif cmd.name == "capture":
        _capture(updater, cmd)
    elif updater.store is None:
        raise Refused("this device follows no channel (updates.channel) and keeps no bundle store")
    elif cmd.name == "rollback":
        if not updater.roll_back("rollback command"):
            raise Refused("nothing to roll back to")
    elif cmd.name == "pin":
        assert cmd.version is not None
        _pin(updater, cmd.version)
    elif cmd.name in ("unpin", "reload"):
        if cmd.name == "unpin":
            updater.pin.set(None)
        _reread_release(updater)


def _set_threshold(updater: Updater, value: float) -> None:
    updater.config.detection.score_threshold = value
    for served in (updater.pipeline.served, updater.previous):
        if served is not None:
            served.decoder.score_threshold = value
    logger.info("score threshold set to %s by command", value)


def _capture(updater: Updater, cmd: Command) -> None:
    capture = updater.capture
    if capture is None:
        raise Refused("this device does not capture")
    try:
        if cmd.action == "policy":
            assert cmd.policy is not None
            capture.set_policy(cmd.policy)
        else:
            capture.set_enabled(cmd.action == "on")
    except OSError as exc:
        raise Refused(f"cannot open the capture spool {capture.spool_dir}: {exc}") from exc
    except ValueError as exc:
        raise Refused(str(exc)) from exc
    updater.link.publish_status()


def _pin(updater: Updater, version: int) -> None:
    store = updater.store
    assert store is not None
    sha = store.find_version(version)
    if sha is None:
        raise Refused(f"version {version} is not in the bundle store")
    activated = sha != updater.pipeline.served.manifest.model.sha256
    if activated:
        updater.activate(version, sha, probation=False)  # chosen by an operator
    if updater.pull is not None:
        updater.pull.stop()
        updater.pull = None
    updater.pin.set(version)
    if not activated:
        updater.link.publish_status()


def _reread_release(updater: Updater) -> None:
    """Subscribing again makes the broker deliver the retained release anew."""
    if updater.channel is None:
        raise Refused("no channel to read")
    topic = updater.topics.release(updater.channel)
    updater.link.unsubscribe(topic)
    updater.link.subscribe(topic)


def _name_of(raw: bytes) -> str | None:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    name = obj.get("cmd") if isinstance(obj, dict) else None
    return str(name)[:64] if name is not None else None
