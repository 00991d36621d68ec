"""The `lethe` command: the ML commands of `models.cli` plus keys, serve and demo."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from models.cli import build_parser as build_ml_parser
from models.cli import run


def cmd_keys_create(args: argparse.Namespace) -> None:
    """Create an API client and print its key (shown once, stored only hashed)."""
    from app.cli import keys_create
    from app.settings import get_settings

    scopes = [s for s in args.scopes.split(",") if s]
    print(keys_create(args.name, scopes, get_settings(), expires_in_days=args.expires_in_days))


def cmd_keys_list(args: argparse.Namespace) -> None:
    """Print every API client as JSON: prefix, scopes, dates and state (never a key or hash)."""
    from app.cli import keys_list
    from app.settings import get_settings

    print(json.dumps(keys_list(get_settings()), indent=2))


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    """Revoke an API client by id or key prefix; its key stops working at once."""
    from app.cli import keys_revoke
    from app.settings import get_settings

    try:
        print(f"revoked {keys_revoke(args.client, get_settings())}")
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def cmd_serve(args: argparse.Namespace) -> None:
    """Start the API and a worker (embedded: SQLite and a SQLite-backed broker) and stay up."""
    from app.settings import get_settings
    from worker.embedded import serve

    if not args.embedded:
        raise SystemExit(
            "only --embedded is served by this command; deploy with docker-compose.yml"
        )
    serve(get_settings(), args.port)


def cmd_demo(args: argparse.Namespace) -> None:
    """Train or reuse a synthfaces model, register it, erase one person over HTTP, print it."""
    from app.settings import get_settings
    from worker.embedded import demo, efficacy_summary

    result = demo(get_settings(), epochs=args.epochs)
    print(json.dumps(result, indent=2))
    print(f"calibrated efficacy: {efficacy_summary(result)}")
    if result["status"] != "completed":
        raise SystemExit(f"the deletion request ended as {result['status']}")


def build_parser() -> argparse.ArgumentParser:
    """The full `lethe` parser."""
    parser = build_ml_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help=cmd_keys_create.__doc__)
    create.add_argument("--name", default="client")
    create.add_argument(
        "--scopes", required=True, help="comma-separated, e.g. requests:create,requests:read"
    )
    create.add_argument(
        "--expires-in-days", type=float, help="the key stops working after this (default: never)"
    )
    create.set_defaults(func=cmd_keys_create)
    listing = key_commands.add_parser("list", help=cmd_keys_list.__doc__)
    listing.set_defaults(func=cmd_keys_list)
    revoke = key_commands.add_parser("revoke", help=cmd_keys_revoke.__doc__)
    revoke.add_argument("client", help="the client's id or its key prefix (as `keys list` shows)")
    revoke.set_defaults(func=cmd_keys_revoke)

    serve = commands.add_parser("serve", help=cmd_serve.__doc__)
    serve.add_argument(
        "--embedded", action="store_true", help="SQLite, local artifacts, SQLite broker"
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=cmd_serve)

    demo = commands.add_parser("demo", help=cmd_demo.__doc__)
    demo.add_argument("--epochs", type=int, help="training epochs for the demo model")
    demo.set_defaults(func=cmd_demo)
    return parser


COMPUTING = frozenset(
    {"train", "unlearn", "evaluate", "erase-attribute", "attribute-benchmark", "benchmark", "demo"}
)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `lethe` console script; computing commands get their share of cores."""
    parser = build_parser()
    command = parser.parse_known_args(argv)[0].command
    if command in COMPUTING:
        from app.settings import get_settings
        from worker.threads import configure_threads

        configure_threads(get_settings())
    run(parser, argv)


if __name__ == "__main__":
    main()
