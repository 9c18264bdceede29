"""click parameter types shared by the host commands."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from firmware_profiles import Profile, ProfileError, load_profile

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


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


def bundle_options(func: F) -> F:
    """--sign-key, --name, --version and --force, as `convert` and `import` write bundles."""
    options = [
        click.option(
            "--sign-key",
            type=click.Path(path_type=Path),
            help="Ed25519 private key (edgegap keys generate).",
        ),
        click.option("--name", help="Bundle name [default: the model file name]."),
        click.option(
            "--version",
            "version",
            type=click.IntRange(min=0),
            help="Monotonic bundle version [default: UTC time as YYYYMMDDHHMMSS].",
        ),
        click.option(
            "--force", is_flag=True, help="Write the bundle even if a gate fails (marked failed)."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func
