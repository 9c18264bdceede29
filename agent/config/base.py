"""The config's error type and the strict base every section derives from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from agent.errors import EdgegapError


class ConfigError(EdgegapError, ValueError):
    """A config that cannot be read or does not validate; one `key.path: reason` per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class Strict(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
