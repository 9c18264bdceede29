"""One module per `edgegap` subcommand (or group of subcommands)."""
