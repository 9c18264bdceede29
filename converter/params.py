"""click parameter types shared by the host commands."""

from __future__ import annotations

import logging
from typing import Any

import click

from firmware_profiles import Profile, ProfileError, load_profile

logger = logging.getLogger(__name__)


class ProfileType(click.ParamType):
    """A shipped profile name, or a path to a profile YAML file."""

    name = "profile"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Profile:
        if isinstance(value, Profile):
            return value
        try:
            return load_profile(value)
        except ProfileError as exc:
            self.fail(str(exc), param, ctx)


class FloatListType(click.ParamType):
    """One number or a comma-separated list, e.g. 127.5 or 123.7,116.3,103.5."""

    name = "number[,number...]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> list[float]:
        if isinstance(value, list):
            return value
        try:
            return [float(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a number or a comma-separated list of numbers", param, ctx)


class ShapeType(click.ParamType):
    """An input shape without the batch dimension, e.g. 96,96,3."""

    name = "H,W,C"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            dims = tuple(int(v) for v in str(value).split(","))
        except ValueError:
            dims = ()
        if not dims or any(d < 1 or d > 65536 for d in dims):
            self.fail(f"{value!r} is not a shape like 96,96,3 (positive integers)", param, ctx)
        return dims


PROFILE = ProfileType()
SHAPE = ShapeType()
FLOAT_LIST = FloatListType()
