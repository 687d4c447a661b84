"""``phs-field``: the reference field device (tablet) on the command line.

    phs-field init --device-id ID [--edge-url URL]
    phs-field pair --code CODE [--edge-url URL | --node NODE_ID] [--expect-fp FP]
    phs-field record --item ID --from S --to S [--at TIME] [--actor A] [--id ID]
    phs-field encounter --id ID --patient P --facility F --kind K --at TIME
                        [--screening-due] [--immunization-due]
    phs-field draft-cohort --cohort ID --definition FILE_OR_JSON [--id ID]
    phs-field sync [--edge-url URL]
    phs-field serve [--interface X ...] [--host H] [--port P] [--no-push]
    phs-field status
    phs-field items
    phs-field server-data [--aggregate NAME]
    phs-field simulate --devices N --transitions M (--codes FILE | --edge-data-dir DIR)
                       [--mode push|gather|mixed] [--edge-url URL] [--node NODE_ID]
                       [--interface X ...] [--timeout S]

Every command takes --data-dir DIR and --config FILE; those that look for
the edge also take --interface and --no-discovery. Results are printed as
JSON on stdout; errors as one line on stderr (exit 2; 1 when a sync or a
simulation did not finish).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from edgenode.keys import create_key
from fielddevice.client import EdgeRefused, EdgeUnreachable, PairingRefused, api_base
from fielddevice.device import FieldDevice
from fielddevice.finder import (
    DiscoveryUnavailable,
    EdgeNotFound,
    Refusal,
    browse_edges,
    choose_for_pairing,
    plan,
    reach,
)
from fielddevice.service import serve
from fielddevice.settings import CONFIG_NAME, CONFIG_TABLE, FieldSettings, load_field_settings
from fielddevice.simulate import MODES, SimOptions, Simulation, SimulationFailed
from fielddevice.store import FieldStore
from observability.logs import FORMATS, configure_logging, log_format
from shared.errors import CohortInvalid, PhsError, ValidationFailed
from shared.signing import fingerprint
from shared.values import identifier, parse_timestamp


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help=f"TOML settings file (default DATA_DIR/{CONFIG_NAME})")
    common.add_argument("--data-dir", help="directory of the key, config and database")
    common.add_argument(
        "--log-format", choices=FORMATS, help="json or text (default json for serve, else text)"
    )
    lan = argparse.ArgumentParser(add_help=False)
    lan.add_argument(
        "--interface",
        action="append",
        help="interface name or address to browse/advertise on (repeatable)",
    )
    lan.add_argument(
        "--no-discovery", action="store_true", help="do not use mDNS (setting discovery)"
    )
    parser = argparse.ArgumentParser(
        prog="phs-field", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", parents=[common], help="create key, config and store")
    init.add_argument("--device-id", required=True)
    init.add_argument("--edge-url", help="fallback address of the edge (setting edge_url)")
    pair = sub.add_parser("pair", parents=[common, lan], help="redeem a pairing code")
    pair.add_argument("--code", required=True)
    where = pair.add_mutually_exclusive_group()
    where.add_argument("--edge-url", help="the edge's address (no discovery)")
    where.add_argument("--node", help="pair with the discovered edge of this node id")
    pair.add_argument("--expect-fp", help="refuse an edge whose fingerprint is not this")
    record = sub.add_parser("record", parents=[common], help="record one outreach transition")
    record.add_argument("--item", required=True)
    record.add_argument("--from", dest="from_state", required=True)
    record.add_argument("--to", dest="to_state", required=True)
    record.add_argument("--at", help="occurredAt (RFC 3339 UTC, default now)")
    record.add_argument("--actor", help="actorId (default the device id)")
    record.add_argument("--id", dest="record_id", help="transition id (default a new UUID)")
    enc = sub.add_parser("encounter", parents=[common], help="record one encounter")
    enc.add_argument("--id", dest="record_id", required=True)
    enc.add_argument("--patient", required=True)
    enc.add_argument("--facility", required=True)
    enc.add_argument("--kind", required=True, choices=["visit", "screening", "immunization"])
    enc.add_argument("--at", required=True)
    enc.add_argument("--screening-due", action="store_true")
    enc.add_argument("--immunization-due", action="store_true")
    draft = sub.add_parser(
        "draft-cohort", parents=[common], help="queue a cohort.draft (validated here first)"
    )
    draft.add_argument("--cohort", required=True, help="the cohort id")
    draft.add_argument(
        "--definition",
        required=True,
        help="the definition: inline JSON (starting with { or [), a file, or - for stdin",
    )
    draft.add_argument("--id", dest="draft_id", help="draft id (default a new UUID)")
    sync = sub.add_parser(
        "sync", parents=[common, lan], help="find the edge, push, pull items and server data"
    )
    sync.add_argument("--edge-url", help="use this address, not discovery")
    srv = sub.add_parser("serve", parents=[common, lan], help="gather API, advert, pushing")
    srv.add_argument("--host")
    srv.add_argument("--port", type=int)
    srv.add_argument("--no-push", action="store_true", help="only wait to be gathered")
    sub.add_parser("status", parents=[common], help="pairing, pending and synced counts")
    sub.add_parser("items", parents=[common], help="the outreach items pulled from the edge")
    data = sub.add_parser(
        "server-data", parents=[common], help="the server data pulled from the edge (read-only)"
    )
    data.add_argument("--aggregate", help="only this aggregate (e.g. population_cohort)")
    sim = sub.add_parser("simulate", parents=[common, lan], help="many tablets in one process")
    sim.add_argument("--devices", type=int, required=True)
    sim.add_argument("--transitions", type=int, required=True)
    codes = sim.add_mutually_exclusive_group(required=True)
    codes.add_argument("--codes", help="file of lines 'deviceId code'")
    codes.add_argument("--edge-data-dir", help="mint codes with edgenode pair-device there")
    sim.add_argument("--mode", choices=MODES, default="push")
    sim.add_argument("--edge-url", help="the edge's address (pairing, and pushing)")
    sim.add_argument("--node", help="with several edges advertised: this node id")
    sim.add_argument("--timeout", type=float, default=120.0, help="seconds (default 120)")
    sim.add_argument("--prefix", default="sim", help="device ids PREFIX-001... (--edge-data-dir)")
    return parser


def _print(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str), flush=True)


def init(args: argparse.Namespace) -> int:
    identifier(args.device_id, "device id")
    if args.edge_url:
        api_base(args.edge_url)
    data_dir = Path(args.data_dir or FieldSettings().data_dir)
    config = Path(args.config) if args.config else data_dir / CONFIG_NAME
    settings = FieldSettings(device_id=args.device_id, data_dir=str(data_dir))
    if settings.key_path.exists() or config.exists():
        raise ValidationFailed(
            f"{data_dir} already holds a device; refusing to replace its identity "
            "(remove it to start over)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    keypair = create_key(settings.key_path)
    lines = [f"[{CONFIG_TABLE}]", f"device_id = {json.dumps(args.device_id)}"]
    if args.edge_url:
        lines.append(f"edge_url = {json.dumps(args.edge_url)}")
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    async def create_store() -> None:
        await (await FieldStore(settings.database_path).open()).close()

    asyncio.run(create_store())
    _print(
        {
            "deviceId": args.device_id,
            "dataDir": str(data_dir),
            "fp": fingerprint(keypair.public_key),
            "publicKey": keypair.public_key_b64,
        }
    )
    return 0


def _load(args: argparse.Namespace) -> FieldSettings:
    overrides: dict[str, Any] = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "interfaces": getattr(args, "interface", None),
        "log_format": args.log_format,
    }
    if getattr(args, "no_discovery", False):
        overrides["discovery"] = False
    return load_field_settings(args.config, args.data_dir, overrides=overrides)


def _session(settings: FieldSettings) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=settings.request_timeout_seconds)
    )


async def pair(device: FieldDevice, args: argparse.Namespace) -> int:
    settings = device.settings
    refused: list[Refusal] = []
    notes: list[str] = []
    advert = None
    async with _session(settings) as session:
        base: str | None = api_base(args.edge_url) if args.edge_url else None
        if base is None and settings.discovery:
            try:
                adverts = await browse_edges(
                    None, settings.interfaces, settings.host, settings.discovery_seconds
                )
                advert, refused = choose_for_pairing(adverts, args.node, args.expect_fp)
            except (DiscoveryUnavailable, EdgeNotFound) as err:
                if not settings.edge_url:
                    raise
                notes.append(f"discovery found no edge to pair with: {err}")
                refused = list(getattr(err, "refused", []))
        if advert is not None:
            base = await reach(session, advert.base_urls())
            if base is None:
                raise EdgeUnreachable(f"edge {advert.name} does not answer at its addresses")
        elif base is None and settings.edge_url:
            base = api_base(settings.edge_url)
            notes.append(f"pairing through the configured edge_url {settings.edge_url}")
        elif base is None:
            raise ValidationFailed("discovery is off and no edge_url is set: give --edge-url")
        for note in notes:
            print(f"phs-field: {note}", file=sys.stderr)
        pairing = await device.pair(
            session,
            base,
            args.code,
            expect_fp=args.expect_fp,
            advert_fp=None if advert is None else advert.fingerprint,
            advert_node=args.node if advert is None else advert.node_id,
        )
    _print(
        {
            "deviceId": device.device_id,
            "paired": pairing.describe(),
            "advert": None if advert is None else advert.name,
            "refused": [r.describe() for r in refused],
            "notes": notes,
        }
    )
    return 0


async def record(device: FieldDevice, args: argparse.Namespace) -> int:
    at = parse_timestamp(args.at, "--at") if args.at else None
    stored = await device.record_transition(
        args.item, args.from_state, args.to_state, at, args.actor, args.record_id
    )
    _print({"recorded": stored.body, "pending": await device.store.pending_counts()})
    return 0


async def encounter(device: FieldDevice, args: argparse.Namespace) -> int:
    stored = await device.record_encounter(
        {
            "id": args.record_id,
            "patientRef": args.patient,
            "facilityId": args.facility,
            "occurredAt": args.at,
            "kind": args.kind,
            "screeningDue": args.screening_due,
            "immunizationDue": args.immunization_due,
        }
    )
    _print({"recorded": stored.record_id, "pending": await device.store.pending_counts()})
    return 0


def read_definition(value: str) -> Any:
    """``--definition``: inline JSON, ``-`` (stdin), or a file of JSON."""
    text = value
    where = "--definition"
    if value == "-":
        text, where = sys.stdin.read(), "stdin"
    elif not value.lstrip().startswith(("{", "[")):
        try:
            text = Path(value).read_text(encoding="utf-8")
        except OSError as err:
            raise ValidationFailed(
                f"--definition {value!r} is neither inline JSON nor a readable file: {err}"
            ) from err
        where = value
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValidationFailed(f"the definition in {where} is not JSON: {err}") from err


async def draft_cohort(device: FieldDevice, args: argparse.Namespace) -> int:
    definition = read_definition(args.definition)
    try:
        stored = await device.draft_cohort(args.cohort, definition, args.draft_id)
    except CohortInvalid as err:
        _print({"refused": "cohort_invalid", "errors": err.errors})
        print(
            f"phs-field: cohort_invalid: {len(err.errors)} error(s), nothing queued",
            file=sys.stderr,
        )
        for error in err.errors:
            print(f"  {error['path'] or '/'}: {error['message']}", file=sys.stderr)
        return 2
    _print(
        {"drafted": stored.describe(), "pendingDrafts": await device.store.pending_draft_count()}
    )
    return 0


async def sync(device: FieldDevice, args: argparse.Namespace) -> int:
    settings = device.settings
    pairing = await device.store.pairing()
    if pairing is None:
        raise ValidationFailed("this device is not paired: run phs-field pair first")
    adverts = None
    why: str | None = "discovery is off (setting discovery)"
    if not args.edge_url and settings.discovery:
        try:
            adverts = await browse_edges(
                None, settings.interfaces, settings.host, settings.discovery_seconds
            )
            why = None
        except DiscoveryUnavailable as err:
            why = str(err)
    doc: dict[str, Any] = {"deviceId": device.device_id}
    try:
        chosen = plan(adverts, pairing, settings.edge_url, args.edge_url, why)
    except EdgeNotFound as err:
        doc.update(
            error=str(err),
            seen=0 if adverts is None else len(adverts),
            refused=[r.describe() for r in err.refused],
            pending=await device.store.pending_counts(),
        )
        _print(doc)
        print(f"phs-field: {err}", file=sys.stderr)
        return 1
    doc["edge"] = chosen.describe()
    code = 0
    async with _session(settings) as session:
        try:
            doc.update(await device.sync(session, chosen))
        except (EdgeUnreachable, EdgeRefused) as err:
            doc["error"] = str(err)
            print(f"phs-field: sync stopped: {err}", file=sys.stderr)
            code = 1
    doc["pending"] = await device.store.pending_counts()
    _print(doc)
    return code


async def status(device: FieldDevice, _args: argparse.Namespace) -> int:
    _print(await device.status())
    return 0


async def items(device: FieldDevice, _args: argparse.Namespace) -> int:
    found = await device.store.items()
    _print({"items": found, "cursor": await device.store.state("items_cursor") or "0"})
    return 0


async def server_data(device: FieldDevice, args: argparse.Namespace) -> int:
    store = device.store
    counts = await store.server_record_counts()
    if args.aggregate is not None:
        counts = {args.aggregate: counts.get(args.aggregate, 0)}
    _print(
        {
            "cursor": await store.state("server_data_cursor") or "0",
            "counts": counts,
            "records": await store.server_records(args.aggregate),
        }
    )
    return 0


async def run_serve(device: FieldDevice, args: argparse.Namespace) -> int:
    return await serve(device, push=not args.no_push)


COMMANDS: dict[str, Callable[[FieldDevice, argparse.Namespace], Awaitable[int]]] = {
    "pair": pair,
    "record": record,
    "encounter": encounter,
    "draft-cohort": draft_cohort,
    "sync": sync,
    "status": status,
    "items": items,
    "server-data": server_data,
    "serve": run_serve,
}


async def _with_device(
    settings: FieldSettings, args: argparse.Namespace, command: Callable[..., Awaitable[int]]
) -> int:
    device = await FieldDevice.open(settings)
    try:
        return await command(device, args)
    finally:
        await device.close()


async def simulate(settings: FieldSettings, args: argparse.Namespace) -> int:
    options = SimOptions(
        devices=args.devices,
        transitions=args.transitions,
        mode=args.mode,
        codes_file=args.codes,
        edge_data_dir=args.edge_data_dir,
        edge_url=args.edge_url,
        node=args.node,
        timeout=args.timeout,
        prefix=args.prefix,
    )
    summary, code = await Simulation(settings, options, sys.stderr).run()
    _print(summary)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            return init(args)
        settings = _load(args)
        # JSON lines on stdout for serve (journald); text on stderr for the
        # other commands, whose stdout is their JSON answer (docs/logging.md).
        service = args.command == "serve"
        configure_logging(
            settings.log_level,
            log_format(settings.log_format, service),
            stream=sys.stdout if service else sys.stderr,
        )
        if args.command == "simulate":
            return asyncio.run(simulate(settings, args))
        return asyncio.run(_with_device(settings, args, COMMANDS[args.command]))
    except PhsError as err:
        print(f"phs-field: {err.code}: {err.detail}", file=sys.stderr)
        return 2
    except (EdgeNotFound, EdgeUnreachable, EdgeRefused, PairingRefused) as err:
        print(f"phs-field: {err}", file=sys.stderr)
        for refusal in getattr(err, "refused", []):
            print(f"  refused {refusal.advert.name}: {refusal.reason}", file=sys.stderr)
        return 2
    except (SimulationFailed, DiscoveryUnavailable) as err:
        print(f"phs-field: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"phs-field: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
