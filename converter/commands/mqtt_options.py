"""Broker options shared by `edgegap publish`, `fleet` and `gc`: URL, fleet, TLS, password file."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from agent.updates.protocol import NAME, Topics
from converter.broker_client import PASSWORD_ENV, USERNAME_ENV, BrokerOptions

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def broker_options(func: F) -> F:
    """Add --broker, --fleet, --prefix, --ca, --cert, --key-file, --insecure, --password-file
    and --timeout to a command; they arrive as a `broker` keyword (BrokerOptions, Topics)."""
    options = [
        click.option(
            "--broker",
            "url",
            required=True,
            metavar="URL",
            help=f"mqtt://[user@]host[:port] or mqtts://…; user also from {USERNAME_ENV}.",
        ),
        click.option(
            "--fleet",
            default="default",
            show_default=True,
            help="Fleet: topics start edgegap/FLEET.",
        ),
        click.option("--prefix", default=None, help="Topic prefix instead of edgegap/FLEET."),
        click.option("--ca", "ca_file", type=FILE, help="CA bundle for an mqtts:// broker."),
        click.option("--cert", "cert_file", type=FILE, help="Client certificate (mutual TLS)."),
        click.option("--key-file", "key_file", type=FILE, help="Client private key (mutual TLS)."),
        click.option(
            "--insecure", is_flag=True, help="Skip the broker's hostname check (lab only)."
        ),
        click.option(
            "--password-file",
            type=FILE,
            help=f"File whose first line is the broker password (else ${PASSWORD_ENV}).",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0.1),
            default=5.0,
            show_default=True,
            help="Seconds to wait for the broker to connect or answer.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def resolve(kwargs: dict[str, Any]) -> tuple[BrokerOptions, Topics]:
    """Pop the broker options out of a command's keyword arguments."""
    fleet = kwargs.pop("fleet")
    prefix = kwargs.pop("prefix")
    if prefix is None and not NAME.match(fleet):
        raise click.BadParameter(
            f"{fleet!r} is not a fleet name (one topic level)", param_hint="--fleet"
        )
    options = BrokerOptions(
        url=kwargs.pop("url"),
        ca_file=kwargs.pop("ca_file"),
        cert_file=kwargs.pop("cert_file"),
        key_file=kwargs.pop("key_file"),
        password_file=kwargs.pop("password_file"),
        insecure=kwargs.pop("insecure"),
        timeout_s=kwargs.pop("timeout"),
    )
    return options, Topics.for_fleet(fleet, prefix)
