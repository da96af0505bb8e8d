"""python -m app serve | check-config | keys create|list|revoke | batch"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.config import ConfigError, Settings, expand_path, load_settings, masked

if TYPE_CHECKING:
    from app.auth.key_file import KeyRecord


def _load(path: str | None) -> Settings:
    try:
        return load_settings(path, os.environ)
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(args: argparse.Namespace) -> None:
    import msgspec
    import uvicorn

    from app.auth.key_file import KeyFileError
    from app.framing import uvicorn_options
    from app.lifecycle import serve
    from app.logs import configure_logging
    from app.server import create_app

    settings = _load(args.config)
    server = msgspec.structs.replace(
        settings.server,
        host=args.host or settings.server.host,
        port=args.port if args.port is not None else settings.server.port,
    )
    settings = msgspec.structs.replace(settings, server=server)
    configure_logging(settings.server.log_level, settings.server.log_format)
    try:
        app = create_app(settings)
    except KeyFileError as exc:
        print(f"invalid key file: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    config = uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        **uvicorn_options(server),  # type: ignore[arg-type]
        log_level=settings.server.log_level,
        # JSON: uvicorn's own lines go through the root logger's JSON formatter too.
        log_config=None if settings.server.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        access_log=False,  # app.requests logs one line per request, without secrets
    )
    # uvicorn's Server run with a graceful drain on SIGTERM/SIGINT (app.lifecycle).
    if not serve(config, app.state.drain, settings.server):
        raise SystemExit(3)  # as uvicorn.run: the server could not start


def _check_config(args: argparse.Namespace) -> None:
    settings = _load(args.config)
    print(json.dumps(masked(settings), indent=2))


def _key_file(args: argparse.Namespace) -> tuple[Path, Settings]:
    settings = _load(args.config)
    path = args.key_file or settings.auth.key_file
    if not path:
        print("no key file: set auth.key_file in the config or pass --key-file", file=sys.stderr)
        raise SystemExit(2)
    return Path(expand_path(path, os.environ)).absolute(), settings


def _keys_create(args: argparse.Namespace) -> None:
    from app.auth.key_file import KeyFileError, create_key

    path, settings = _key_file(args)
    models = [m.strip() for m in (args.models or "").split(",") if m.strip()]
    served = {m.name for m in settings.models} | {a.name for m in settings.models for a in m.aliases}
    unknown = sorted(set(models) - served)
    if unknown:
        print(f"warning: not served by this config: {', '.join(unknown)}", file=sys.stderr)
    try:
        key = create_key(
            path,
            args.name,
            rpm=args.rpm,
            tpm=args.tpm,
            models=models,
            taken=frozenset(k.name for k in settings.auth.keys),
        )
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    # Where it went on stderr, so stdout is the key alone (`KEY=$(python -m app keys create ...)`).
    print(f"created key {args.name!r} in {path}; it is shown only this once:", file=sys.stderr)
    print(key)


def _keys_list(args: argparse.Namespace) -> None:
    from app.auth.key_file import KeyFileError, read_key_file

    path, _ = _key_file(args)
    try:
        records = read_key_file(path)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.json:
        print(json.dumps([_listed(r) for r in records], indent=2))
        return
    table = [["NAME", "RPM", "TPM", "MODELS", "CREATED"]] + [
        [r.name, _limit(r.rpm), _limit(r.tpm), ",".join(r.models) or "all", _listed(r)["created"]]
        for r in records
    ]
    widths = [max(len(line[i]) for line in table) for i in range(5)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _listed(record: KeyRecord) -> dict[str, Any]:
    """What `keys list` shows of a key: never the key, nor its digest."""
    return {
        "name": record.name,
        "rpm": record.rpm,
        "tpm": record.tpm,
        "models": record.models,
        "created": record.created.isoformat().replace("+00:00", "Z"),
    }


def _limit(value: int | None) -> str:
    return "default" if value is None else "unlimited" if value == 0 else str(value)


def _keys_revoke(args: argparse.Namespace) -> None:
    from app.auth.key_file import KeyFileError, revoke_key

    path, _ = _key_file(args)
    try:
        revoke_key(path, args.name)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"revoked key {args.name!r}; a running server refuses it within seconds", file=sys.stderr)


def _batch(args: argparse.Namespace) -> None:
    import asyncio

    import msgspec

    from app.batches.offline import errors_path, run_file, write_npy, write_parquet
    from app.engine.engine import EmbeddingEngine
    from app.logs import configure_logging

    settings = _load(args.config)
    configure_logging("warning", settings.server.log_format)
    source, output = Path(args.input), Path(args.output)
    if not source.is_file():
        print(f"error: no such input file: {source}", file=sys.stderr)
        raise SystemExit(2)
    # In-process with nothing interactive to yield to: no background worker, the model's
    # own workers run every line.
    no_api = msgspec.structs.replace(settings.batch, enabled=False)
    engine = EmbeddingEngine(msgspec.structs.replace(settings, batch=no_api))

    async def run() -> int:
        engine.start()
        await asyncio.to_thread(engine.wait_loaded)
        if not engine.ready:
            print(f"error: the models did not load: {engine.status()}", file=sys.stderr)
            return 2
        summary = await run_file(
            engine, source, output, chunk_inputs=settings.batch.chunk_inputs, progress=sys.stderr
        )
        print(
            f"{summary.completed} lines done this run ({summary.done_before} already in {output}), "
            f"{summary.failed} failed, {summary.tokens} tokens",
            file=sys.stderr,
        )
        if summary.failed:
            print(f"failed lines are in {errors_path(output)}; run again to retry them", file=sys.stderr)
        return 1 if summary.failed else 0

    try:
        code = asyncio.run(run())
    finally:
        engine.stop()
    try:
        if args.npy:
            print(f"{write_npy(output, Path(args.npy))} vectors written to {args.npy}", file=sys.stderr)
        if args.parquet:
            print(
                f"{write_parquet(output, Path(args.parquet))} vectors written to {args.parquet}",
                file=sys.stderr,
            )
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = code or 2
    raise SystemExit(code)


def _add_keys_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="manage API keys in the key file (auth.key_file)")
    actions = keys.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML settings (default: config/default.toml)")
    common.add_argument(
        "--key-file",
        help="the key file (default: auth.key_file from the config, "
        "$XDG_STATE_HOME/llm2vec-gateway/keys.json)",
    )
    create = actions.add_parser("create", parents=[common], help="make a key; prints it once")
    create.add_argument("--name", required=True)
    create.add_argument("--rpm", type=int, help="requests per window (default: limits.rpm; 0: unlimited)")
    create.add_argument("--tpm", type=int, help="tokens per window (default: limits.tpm; 0: unlimited)")
    create.add_argument("--models", help="comma-separated served names it may use (default: all)")
    create.set_defaults(run=_keys_create)
    listing = actions.add_parser("list", parents=[common], help="the keys' names and limits (never a key)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_keys_list)
    revoke = actions.add_parser("revoke", parents=[common], help="remove a key")
    revoke.add_argument("name")
    revoke.set_defaults(run=_keys_revoke)


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
    _add_keys_commands(commands)
    batch = commands.add_parser("batch", help="run a Batch API input file in this process (resumable)")
    batch.add_argument("input", help="JSONL batch requests (OpenAI's batch input format)")
    batch.add_argument(
        "-o", "--output", required=True, help="JSONL results; failures go to <stem>.errors.jsonl"
    )
    batch.add_argument("--config", help="TOML settings (default: config/default.toml)")
    batch.add_argument("--npy", help="also write every vector, in output order, as a float32 .npy")
    batch.add_argument("--parquet", help="also write custom_id, index, embedding as Parquet (needs pyarrow)")
    batch.set_defaults(run=_batch)
    args = parser.parse_args(argv)
    args.run(args)
