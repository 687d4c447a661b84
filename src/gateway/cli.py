"""``phs-gateway``: serve, and the admin commands that work on the store directly.

    phs-gateway serve [--host H] [--port P] [--workers N]
    phs-gateway relay [--nats nats://127.0.0.1:4222]
    phs-gateway enroll-node --node-id ID --tenant T --facility F [...] --public-key B64
                            [--capability risk_override]
    phs-gateway revoke-node --node-id ID
    phs-gateway create-token --tenant T --role admin|service|analyst [--label L]
    phs-gateway list-keys --node-id ID
    phs-gateway rotate-key --node-id ID [--public-key B64] [--overlap-seconds S]
    phs-gateway retire-key --key-id KEY [--overlap-seconds S]
    phs-gateway revoke-key --key-id KEY
    phs-gateway migrate
    phs-gateway audit verify [--anchor COUNT:HASH] | tail [-n N]

Every command takes --config FILE and --data-dir DIR (and --database-url).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from gateway import audit_commands, key_commands
from gateway.app import create_app
from gateway.db.database import Database
from gateway.http import DATABASE, system_clock
from gateway.registry import create_token, enroll_node, revoke_node
from gateway.relay import EventRelay, RelayConfig
from gateway.settings import Settings, load_settings
from gateway.workers import check_workers, serve_workers, stop_once_on_signal
from observability.logs import FORMATS, RequestLog, configure_logging, lifecycle, log_format
from observability.sdnotify import Notifier, notify_while_running, watchdog_running
from shared.encoding import JSON, encode
from shared.errors import PhsError
from shared.signing import public_key_from

log = lifecycle("gateway.serve")  # "Running on" is written at any log_level


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML settings file")
    common.add_argument("--data-dir", help="directory of the SQLite store")
    common.add_argument("--database-url", help="SQLAlchemy URL (overrides --data-dir)")
    common.add_argument(
        "--log-format", choices=FORMATS, help="json or text (default json for serve and relay)"
    )
    parser = argparse.ArgumentParser(
        prog="phs-gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", parents=[common], help="run the HTTP gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="processes serving the port (PostgreSQL)")
    relay = sub.add_parser(
        "relay", parents=[common], help="publish the event outbox to NATS JetStream"
    )
    relay.add_argument("--nats", help="NATS URL(s), comma-separated (relay_nats_url)")
    enroll = sub.add_parser("enroll-node", parents=[common], help="enroll an edge node")
    enroll.add_argument("--node-id", required=True)
    enroll.add_argument("--tenant", required=True)
    enroll.add_argument("--facility", action="append", required=True)
    enroll.add_argument("--public-key", required=True, help="base64 Ed25519 public key")
    enroll.add_argument("--capability", action="append", default=[])
    revoke = sub.add_parser("revoke-node", parents=[common], help="revoke an edge node")
    revoke.add_argument("--node-id", required=True)
    token = sub.add_parser("create-token", parents=[common], help="create a bearer token")
    token.add_argument("--tenant", required=True)
    token.add_argument("--role", required=True, choices=["admin", "service", "analyst"])
    token.add_argument("--label", default="")
    sub.add_parser("migrate", parents=[common], help="upgrade the store's schema")
    key_commands.add_parsers(sub, common)
    audit_commands.add_parser(sub, common)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        overrides={
            "data_dir": args.data_dir,
            "database_url": args.database_url,
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "workers": getattr(args, "workers", None),
            "log_format": args.log_format,
        },
    )


async def _with_store(settings: Settings, action: Callable[[Database], Awaitable[Any]]) -> Any:
    database = Database.for_settings(settings)
    try:
        await database.migrate()
        return await action(database)
    finally:
        await database.close()


def _print(document: Any) -> None:
    print(json.dumps(json.loads(encode(document, JSON)), indent=2))


async def _enroll(args: argparse.Namespace, database: Database) -> None:
    async with database.write() as conn:
        node = await enroll_node(
            conn,
            node_id=args.node_id,
            tenant_id=args.tenant,
            facility_ids=args.facility,
            public_key=public_key_from(args.public_key),
            capabilities=args.capability,
            now=system_clock(),
        )
    _print(node.to_wire())


async def _revoke(args: argparse.Namespace, database: Database) -> None:
    async with database.write() as conn:
        node = await revoke_node(conn, args.node_id, system_clock())
    _print(node.to_wire())


async def _token(args: argparse.Namespace, database: Database) -> None:
    async with database.write() as conn:
        token, principal = await create_token(
            conn, tenant_id=args.tenant, role=args.role, label=args.label, now=system_clock()
        )
    print(token)  # shown once: only its hash is stored
    print(
        f"token id {principal.token_id}, tenant {principal.tenant_id}, role {principal.role}",
        file=sys.stderr,
    )


async def _migrate(_args: argparse.Namespace, database: Database) -> None:
    print(f"schema at head ({database.dialect})")


COMMANDS: dict[str, Callable[[argparse.Namespace, Database], Awaitable[None]]] = {
    "enroll-node": _enroll,
    "revoke-node": _revoke,
    "create-token": _token,
    "migrate": _migrate,
}


async def _freeze_startup_objects(_app: web.Application) -> None:
    """Move everything alive after startup out of the garbage collector's sight.

    Modules, the SQLAlchemy schema and dialect, compiled statements and the
    app itself live until the process ends, yet every full collection walked
    them all again (the collector as a whole cost about 1.7 ms a batch of 500
    in the ingest benchmark, docs/performance.md).
    ``gc.freeze`` puts them in a permanent generation that collections skip.
    Nothing changes for objects made later. A frozen object that becomes
    garbage is still freed by reference counting, but a frozen cycle is never
    collected: acceptable for what exists at startup.
    """
    gc.collect()
    gc.freeze()


async def _relay(settings: Settings, nats_url: str | None) -> None:
    """Run the event relay until SIGTERM or SIGINT (docs/events.md)."""
    config = RelayConfig.from_settings(settings, nats_url)
    stop = asyncio.Event()
    notifier = Notifier.from_environ()  # READY=1 after the first round (EventRelay.run)

    def stop_relay() -> None:
        notifier.stopping()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_relay)
    database = Database.for_settings(settings)
    relay = EventRelay(database, config, system_clock)
    try:
        # The watchdog checks only that the event loop turns: the relay is built
        # to wait out NATS and database outages, which must not mean restarts.
        async with watchdog_running(notifier, lambda: asyncio.sleep(0)):
            await relay.run(stop, notifier)
    finally:
        await relay.close()
        await database.close()


def _configure_logging(settings: Settings, worker: str = "", service: bool = True) -> None:
    """JSON lines on stdout for the services (journald), text on stderr for
    the one-shot commands, whose stdout is their answer (docs/logging.md)."""
    number = re.match(r"worker (\d+)", worker)
    configure_logging(
        settings.log_level,
        log_format(settings.log_format, service),
        stream=sys.stdout if service else sys.stderr,
        prefix=worker,
        fields={"worker": int(number[1])} if number else None,
    )


def _serve(settings: Settings, worker: str = "") -> None:
    """Run the HTTP gateway in this process until SIGTERM or SIGINT. A worker of
    ``serve --workers`` (``worker`` names it in its output, e.g. "worker 2 (pid 4242): ")
    shares the port with the others (``SO_REUSEPORT``)."""
    _configure_logging(settings, worker)  # a worker is a fresh interpreter
    app = create_app(settings)
    app.on_startup.append(_freeze_startup_objects)  # after the store is open
    if worker:
        app.on_startup.append(stop_once_on_signal)
    # systemd's watchdog (or the supervisor's, for a worker): fed while the store answers
    notifier = Notifier.from_environ()
    notify_while_running(app, notifier, lambda app: app[DATABASE].ping())

    def announce(msg: str) -> None:
        for line in msg.splitlines():  # a log line like any other (JSON for journald)
            if line.strip() and "CTRL+C" not in line:  # no one presses it under systemd
                log.info("%s%s", worker, line)
        # run_app prints once, when every site listens (store migrated): ready
        notifier.ready(f"serving http://{settings.host}:{settings.port}")

    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        reuse_port=bool(worker) or None,
        print=announce,
        access_log_class=RequestLog,  # no query strings, no headers
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
        _configure_logging(settings, service=args.command in ("serve", "relay"))
        if args.command == "serve":
            check_workers(settings)
            if settings.workers == 1:
                _serve(settings)
                return 0
            # Several processes (gateway.workers), on a store migrated once, first.
            asyncio.run(_with_store(settings, lambda db: _migrate(args, db)))
            return serve_workers(_serve, settings)
        if args.command == "relay":
            asyncio.run(_relay(settings, args.nats))
            return 0
        if args.command == "audit":  # exit status 1: the chain is broken
            audit = audit_commands.run
            status: int = asyncio.run(_with_store(settings, lambda db: audit(args, db)))
            return status
        if args.command in key_commands.NAMES:
            keys = key_commands.run
            asyncio.run(_with_store(settings, lambda db: keys(args, db, settings)))
            return 0
        command = COMMANDS[args.command]
        asyncio.run(_with_store(settings, lambda db: command(args, db)))
        return 0
    except PhsError as err:
        print(f"phs-gateway: {err.code}: {err.detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
