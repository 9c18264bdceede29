"""The `edgegap-agent` device daemon command line."""

from __future__ import annotations

import logging
import sys

import click

from agent.errors import EdgegapError

logger = logging.getLogger(__name__)


class Group(click.Group):
    """Turns errors meant for people into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except EdgegapError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="edgegap")
def cli(verbose: int) -> None:
    """edgegap-agent: serve a signed model bundle on this device with LiteRT.

    \b
    Examples:
      edgegap-agent run --config agent.yaml
      edgegap-agent run --bundle bundle/ --source video.mp4 --broker mqtt://localhost
    """
    level = logging.INFO if verbose == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main() -> None:
    cli(prog_name="edgegap-agent")
