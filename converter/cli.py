"""The `edgegap` host command line."""

from __future__ import annotations

import logging
import sys

import click

from agent.errors import EdgegapError
from converter.commands.broker import broker_cmd
from converter.commands.bundle_tools import bench, verify
from converter.commands.collect import collect
from converter.commands.convert import convert
from converter.commands.eval import eval_cmd
from converter.commands.fleet import fleet, gc
from converter.commands.import_cmd import import_cmd
from converter.commands.inspect import inspect
from converter.commands.keys import keys
from converter.commands.profiles import profiles
from converter.commands.prune import prune
from converter.commands.publish import publish_cmd
from converter.commands.zoo import zoo
from firmware_profiles import ProfileError

logger = logging.getLogger(__name__)

USER_ERRORS: tuple[type[BaseException], ...] = (EdgegapError, ProfileError)
# Modules that only the host install (`pip install 'edgegap[host]'`) brings.
HOST_MODULES = frozenset({"tensorflow", "keras", "sklearn", "skimage", "pycocotools"})


class Group(click.Group):
    """Turns errors meant for people into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from exc
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            if top not in HOST_MODULES:
                raise
            command = ctx.invoked_subcommand or "this command"
            raise click.ClickException(
                f"`edgegap {command}` needs the host install, which has {top}: "
                "pip install 'edgegap[host]'"
            ) from exc


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="edgegap")
def cli(verbose: int) -> None:
    """edgegap: prune, quantize, verify and sign models for edge device profiles.

    \b
    Examples:
      edgegap profiles list
      edgegap keys generate --out keys/
      edgegap convert model.keras --profile raspberry-pi-4 --calibration images/ --output bundle/
      edgegap import detector.tflite --profile raspberry-pi-4 --labels labels.txt --output bundle/
      edgegap verify bundle/ --key keys/edgegap.pub
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


cli.add_command(profiles)
cli.add_command(keys)
cli.add_command(prune)
cli.add_command(convert)
cli.add_command(import_cmd)
cli.add_command(verify)
cli.add_command(inspect)
cli.add_command(bench)
cli.add_command(eval_cmd)
cli.add_command(zoo)
cli.add_command(publish_cmd)
cli.add_command(broker_cmd)
cli.add_command(fleet)
cli.add_command(gc)
cli.add_command(collect)


def main() -> None:
    cli(prog_name="edgegap")
