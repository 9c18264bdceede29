"""`edgegap keys`: Ed25519 signing keys for bundles."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from agent.bundle.signing import generate_keypair, key_id, load_public_key
from converter.console import console

logger = logging.getLogger(__name__)


@click.group("keys")
def keys() -> None:
    """Manage the Ed25519 keys that sign bundles.

    \b
    Examples:
      edgegap keys generate --out keys/
      edgegap convert model.keras ... --sign-key keys/edgegap.key
      edgegap verify bundle/ --key keys/edgegap.pub
    """


@keys.command("generate")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for edgegap.key (private, mode 0600) and edgegap.pub.",
)
@click.option("--force", is_flag=True, help="Replace an existing keypair.")
def generate(out_dir: Path, force: bool) -> None:
    """Write a new Ed25519 keypair."""
    try:
        priv, pub = generate_keypair(out_dir, overwrite=force)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(f"private key: {priv} (mode 0600, keep it secret)")
    console.print(f"public key:  {pub} (copy to devices as a trusted key)")
    console.print(f"key id:      {key_id(load_public_key(pub))}")
