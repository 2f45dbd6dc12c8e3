"""One module per `folio` subcommand, each with `add_arguments(parser)` and `run(args)`."""
