"""Publishing a refreshed bundle: the channel's first stage, through converter.publishing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.updates.protocol import DEFAULT_CHUNK_SIZE, Topics
from converter.broker_client import BrokerOptions, Connection
from converter.publishing import check_channel, prepare, publish

logger = logging.getLogger(__name__)


@dataclass
class Publisher:
    """Sends a signed bundle to the channel and says where it went."""

    broker: BrokerOptions
    topics: Topics
    channel: str

    def __post_init__(self) -> None:
        check_channel(self.channel)

    def __call__(self, bundle: Path) -> dict[str, Any]:
        prepared = prepare(bundle, self.channel, DEFAULT_CHUNK_SIZE)
        with Connection(self.broker, "refresh") as conn:
            done = publish(conn, self.topics, prepared)
        where = self.topics.release(self.channel)
        logger.info("published v%d to %s", done.release.manifest.version, where)
        return {"channel": self.channel, "where": where, "previous": done.previous}
