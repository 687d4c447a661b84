"""``edgenode``: set up, run and look after a district edge node.

    edgenode init --node-id ID --tenant T --facility F [...] --gateway-url URL
                  [--time-zone Africa/Nairobi]
    edgenode run [--host H] [--port P] [--interface NAME_OR_ADDRESS ...] [--no-discovery]
    edgenode pair-device --device-id D
    edgenode report --facility F --period 2026-W47|2026-11-23
    edgenode sync
    edgenode rotate-key
    edgenode status
    edgenode problems

Every command takes --data-dir DIR and --config FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from edgenode.gateway_client import GatewayClient
from edgenode.keys import NodeKeys, create_key, load_key
from edgenode.pairing import issue_code
from edgenode.reports import ensure_complete, generate_report
from edgenode.rotation import REFUSED, ROTATED, WAITING, KeyRotation, RotationOutcome
from edgenode.service import create_app, serve
from edgenode.settings import CONFIG_NAME, EdgeSettings, load_edge_settings
from edgenode.status import collect_problems, collect_refused_writes, collect_status
from edgenode.store.database import EdgeDatabase
from edgenode.sync import Forwarder, Puller
from observability.logs import FORMATS, configure_logging, log_format
from shared.errors import PhsError, ValidationFailed
from shared.periods import period_from_key, zone
from shared.signing import fingerprint
from shared.values import identifier


def now() -> datetime:
    return datetime.now(UTC)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML settings file (default DATA_DIR/edgenode.toml)")
    common.add_argument("--data-dir", help="directory of the key, config and database")
    common.add_argument(
        "--log-format", choices=FORMATS, help="json or text (default json for run, else text)"
    )
    parser = argparse.ArgumentParser(
        prog="edgenode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", parents=[common], help="create key, config and database")
    init.add_argument("--node-id", required=True)
    init.add_argument("--tenant", required=True)
    init.add_argument("--facility", action="append", required=True)
    init.add_argument("--gateway-url", required=True)
    init.add_argument("--time-zone", default="UTC")
    run = sub.add_parser("run", parents=[common], help="serve tablets and sync")
    run.add_argument("--host")
    run.add_argument("--port", type=int, help="TCP port of the tablet API (0: any free one)")
    run.add_argument(
        "--interface",
        action="append",
        metavar="NAME_OR_ADDRESS",
        help="advertise and browse on this interface (repeatable; default: every "
        "non-loopback interface that is up)",
    )
    run.add_argument(
        "--no-discovery",
        action="store_true",
        help="no LAN advert, browsing or gathering (tablets are given the address)",
    )
    pair = sub.add_parser("pair-device", parents=[common], help="print a one-time pairing code")
    pair.add_argument("--device-id", required=True)
    report = sub.add_parser("report", parents=[common], help="generate and queue a report now")
    report.add_argument("--facility", required=True)
    report.add_argument("--period", required=True, help="2026-W47 or 2026-11-23")
    sub.add_parser("sync", parents=[common], help="one forward and pull cycle now")
    sub.add_parser(
        "rotate-key",
        parents=[common],
        help="make a new gateway signing key and register it (docs/key-rotation.md)",
    )
    sub.add_parser("status", parents=[common], help="outbox depth, last sync, problems")
    sub.add_parser(
        "problems", parents=[common], help="records the gateway refused, tablet writes refused here"
    )
    return parser


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def init(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir or EdgeSettings().data_dir)
    config = Path(args.config) if args.config else data_dir / CONFIG_NAME
    for name, value in (
        ("node id", args.node_id),
        ("tenant", args.tenant),
        *(("facility", f) for f in args.facility),
    ):
        identifier(value, name)
    zone(args.time_zone)
    settings = EdgeSettings(data_dir=str(data_dir))
    if settings.key_path.exists() or config.exists():
        raise ValidationFailed(
            f"{data_dir} already holds a node; refusing to replace its "
            "identity (remove it to start over)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    keypair = create_key(settings.key_path)
    config.write_text(
        "[edgenode]\n"
        f"node_id = {json.dumps(args.node_id)}\n"
        f"tenant_id = {json.dumps(args.tenant)}\n"
        f"facility_ids = {_toml_list(args.facility)}\n"
        f"gateway_url = {json.dumps(args.gateway_url)}\n"
        f"time_zone = {json.dumps(args.time_zone)}\n",
        encoding="utf-8",
    )

    async def create_database() -> None:
        await (await EdgeDatabase(settings.database_path).open()).close()

    asyncio.run(create_database())
    facilities = " ".join(f"--facility {f}" for f in args.facility)
    print(f"edge node {args.node_id} initialised in {data_dir}")
    print(f"fingerprint {fingerprint(keypair.public_key)}")
    print("enroll it on the gateway with:")
    print(
        f"  phs-gateway enroll-node --node-id {args.node_id} --tenant {args.tenant} "
        f"{facilities} --public-key {keypair.public_key_b64}"
    )
    return 0


def _load(args: argparse.Namespace) -> EdgeSettings:
    settings = load_edge_settings(
        args.config,
        args.data_dir,
        overrides={
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "interfaces": getattr(args, "interface", None),
            "discovery": False if getattr(args, "no_discovery", False) else None,
            "log_format": args.log_format,
        },
    )
    if not settings.node_id:
        raise ValidationFailed(f"no node configured in {settings.data_dir}: run edgenode init")
    return settings


async def _with_db(settings: EdgeSettings, action: Callable[[EdgeDatabase], Awaitable[int]]) -> int:
    db = await EdgeDatabase(settings.database_path).open()
    try:
        return await action(db)
    finally:
        await db.close()


def _print(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


async def pair_device(settings: EdgeSettings, args: argparse.Namespace, db: EdgeDatabase) -> int:
    async with db.write() as conn:
        code, expires = await issue_code(
            conn, args.device_id, now(), settings.pairing_code_ttl_seconds
        )
    print(code)
    print(
        f"pairing code for device {args.device_id}; single use, expires "
        f"{expires.isoformat(timespec='seconds')}",
        file=sys.stderr,
    )
    return 0


async def report(settings: EdgeSettings, args: argparse.Namespace, db: EdgeDatabase) -> int:
    if args.facility not in settings.facility_ids:
        raise ValidationFailed(f"facility {args.facility} is not served by this node")
    period = period_from_key(args.period)
    ensure_complete(period, zone(settings.time_zone), now())
    async with db.write() as conn:
        stored = await generate_report(
            conn,
            tenant_id=settings.tenant_id,
            node_id=settings.node_id,
            keypair=_keys(settings).current().keypair,
            facility_id=args.facility,
            period=period,
            tz=zone(settings.time_zone),
            now=now(),
        )
    state = (
        "generated, signed and queued"
        if stored.created
        else ("already generated earlier (reports are never regenerated)")
    )
    print(f"report {args.facility} {period.key}: {state}")
    _print(json.loads(stored.payload))
    return 0


def _keys(settings: EdgeSettings) -> NodeKeys:
    return NodeKeys(settings.data_path, settings.node_id, load_key(settings.key_path))


def _client(
    session: aiohttp.ClientSession, settings: EdgeSettings, keys: NodeKeys
) -> GatewayClient:
    """A gateway client signing with the node's current key."""
    current = keys.current()
    return GatewayClient(
        session, settings.gateway_url, settings.node_id, current.keypair, key_id=current.key_id
    )


async def sync(settings: EdgeSettings, _args: argparse.Namespace, db: EdgeDatabase) -> int:
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_seconds)
    keys = _keys(settings)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = _client(session, settings, keys)
        rotation = KeyRotation(client, keys)
        rotated = await rotation.resume()  # a rotation under way is finished first
        forwarded = await Forwarder(db, client, settings, now).forward_once(ignore_schedule=True)
        pulled = await Puller(db, client, now).pull_once()
        rotated = await rotation.resume() or rotated  # one the gateway just asked for
    if rotated is not None:
        print(_rotation_line(rotated))
    print(
        f"forward: {forwarded.batches_sent} batches, {forwarded.items_sent} items "
        f"{forwarded.statuses or ''}; refused records: {forwarded.refused_batches}, "
        f"refused batches split and resent: {forwarded.split_batches}"
    )
    if forwarded.error:
        print(f"forward stopped: {forwarded.error}; next try {forwarded.waiting_until}")
    print(
        f"pull: {pulled.changes} changes, cursor {pulled.cursor}"
        + (f"; stopped: {pulled.error}" if pulled.error else "")
    )
    error = forwarded.error or pulled.error
    if error is None:
        return 0
    async with db.read() as conn:
        waiting = (await collect_status(conn, now()))["outboxDepth"]
    problem = "is unreachable" if forwarded.unreachable or pulled.unreachable else "refused"
    print(
        f"edgenode: gateway {settings.gateway_url} {problem}: {error}; "
        f"{waiting} record(s) wait in the outbox for the next sync",
        file=sys.stderr,
    )
    return 1


def _rotation_line(outcome: RotationOutcome) -> str:
    if outcome.state == ROTATED:
        return f"key: rotated; gateway requests are signed with key {outcome.key_id}"
    waiting = f"; new key {outcome.pending_key_id} kept" if outcome.pending_key_id else ""
    detail = f" ({outcome.detail})" if outcome.detail else ""
    return f"key: {outcome.state}{detail}; still signing with key {outcome.key_id}{waiting}"


async def rotate_key(settings: EdgeSettings, _args: argparse.Namespace, _db: EdgeDatabase) -> int:
    """Make a new gateway key (or take the one under way) and register it: 0
    once the gateway acknowledged it; 1 while it waits (sent again by the next
    try, or by ``edgenode run``); 2 when the gateway refused it."""
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_seconds)
    keys = _keys(settings)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        outcome = await KeyRotation(_client(session, settings, keys), keys).rotate()
    print(_rotation_line(outcome))
    if outcome.state == ROTATED:
        return 0
    pending = keys.pending()
    if outcome.state == REFUSED and pending is not None:
        print(
            "if the gateway refuses the current key, an admin can register the new one:\n"
            f"  phs-gateway rotate-key --node-id {settings.node_id} "
            f"--public-key {pending.keypair.public_key_b64}",
            file=sys.stderr,
        )
    return 1 if outcome.state == WAITING else 2


async def status(settings: EdgeSettings, _args: argparse.Namespace, db: EdgeDatabase) -> int:
    async with db.read() as conn:
        doc = await collect_status(conn, now())
    _print(
        {
            "nodeId": settings.node_id,
            "tenantId": settings.tenant_id,
            "facilityIds": settings.facility_ids,
            "gatewayUrl": settings.gateway_url,
            **_key_status(settings),
            **doc,
        }
    )
    return 0


def _key_status(settings: EdgeSettings) -> dict[str, str | None]:
    """The key gateway requests are signed with, and a new one still waiting."""
    keys = _keys(settings)
    pending = keys.pending()
    return {
        "gatewayKeyId": keys.current().key_id,
        "pendingKeyId": None if pending is None else pending.key_id,
    }


async def problems(_settings: EdgeSettings, _args: argparse.Namespace, db: EdgeDatabase) -> int:
    async with db.read() as conn:
        rows = await collect_problems(conn)
        refused = await collect_refused_writes(conn)
    if not rows:
        print("no problems: the gateway has refused nothing")
    for row in rows:
        print(f"{row['at']}  {row['kind']}  {row['id']}  ({row['subject']}): {row['code']}")
    if refused:
        print("tablet writes refused by this node:")
    for row in refused:
        print(
            f"{row['at']}  {row['kind']}  {row['id']}  (device {row['device_id']}): "
            f"{row['code']}: {row['detail']}"
        )
    return 0


COMMANDS: dict[str, Callable[[EdgeSettings, argparse.Namespace, EdgeDatabase], Awaitable[int]]] = {
    "pair-device": pair_device,
    "report": report,
    "sync": sync,
    "rotate-key": rotate_key,
    "status": status,
    "problems": problems,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            return init(args)
        settings = _load(args)
        # JSON lines on stdout for the service (journald); text on stderr for
        # the one-shot commands, whose stdout is their answer (docs/logging.md).
        service = args.command == "run"
        configure_logging(
            settings.log_level,
            log_format(settings.log_format, service),
            stream=sys.stdout if service else sys.stderr,
        )
        if service:
            app = create_app(settings, load_key(settings.key_path))
            asyncio.run(serve(app, settings.host, settings.port))
            return 0
        command = COMMANDS[args.command]
        return asyncio.run(_with_db(settings, lambda db: command(settings, args, db)))
    except PhsError as err:
        print(f"edgenode: {err.code}: {err.detail}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"edgenode: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
