"""python -m app serve | check-config"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from app.config import ConfigError, Settings, load_settings, masked


def _load(path: str | None) -> Settings:
    try:
        return load_settings(path, os.environ)
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(args: argparse.Namespace) -> None:
    import msgspec
    import uvicorn

    from app.server import create_app

    settings = _load(args.config)
    server = msgspec.structs.replace(
        settings.server,
        host=args.host or settings.server.host,
        port=args.port if args.port is not None else settings.server.port,
    )
    settings = msgspec.structs.replace(settings, server=server)
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    uvicorn.run(
        create_app(settings),
        host=server.host,
        port=server.port,
        log_level=settings.server.log_level,
        access_log=False,  # app.requests logs one line per request, without secrets
    )


def _check_config(args: argparse.Namespace) -> None:
    settings = _load(args.config)
    print(json.dumps(masked(settings), indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the gateway")
    serve.add_argument("--config", help="TOML settings (default: config/default.toml)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(run=_serve)
    check = commands.add_parser("check-config", help="validate and print the effective settings")
    check.add_argument("config", nargs="?", help="TOML settings (default: config/default.toml)")
    check.set_defaults(run=_check_config)
    args = parser.parse_args(argv)
    args.run(args)
