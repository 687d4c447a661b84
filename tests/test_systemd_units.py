"""The systemd units in systemd/: their key properties, ``systemd-analyze verify``
and ``systemd-analyze security`` (the exposure each unit must stay under).

The properties are read by a small parser of the unit files (keys may repeat,
so configparser does not fit). ``systemd-analyze`` (Debian package
``systemd``) checks the files as systemd itself would; it works without
systemd running as PID 1, so the tests run in containers too, and skip with
a reason where the tool is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
DEPLOYMENT = ROOT / "docs" / "deployment.md"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian package: systemd)",
)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections → key → every value given, in order (continuation lines joined)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    logical = re.sub(r"\\\n", " ", text)
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=Value line: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key} given {len(values)} times"
    return values[0]


@dataclass(frozen=True)
class Expected:
    file: str
    user: str
    state_directory: str
    command: str
    families: frozenset[str]
    watchdog: str  # WatchdogSec=
    max_exposure: float  # systemd-analyze security's overall figure (issue 7)


EDGE = Expected(
    file="edgenode.service",
    user="phs-edge",
    state_directory="edgenode",
    command="/opt/phs-sync/.venv/bin/edgenode run --config /etc/phs-sync/edgenode.toml "
    "--data-dir /var/lib/edgenode",
    # AF_NETLINK: zeroconf lists the interfaces to join mDNS multicast on each
    families=frozenset({"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}),
    watchdog="60s",  # a Pi's SD card can stall for seconds
    max_exposure=2.0,
)
GATEWAY = Expected(
    file="phs-gateway.service",
    user="phs-gateway",
    state_directory="phs-gateway",
    command="/opt/phs-sync/.venv/bin/phs-gateway serve --config /etc/phs-sync/gateway.toml "
    "--data-dir /var/lib/phs-gateway",
    families=frozenset({"AF_UNIX", "AF_INET", "AF_INET6"}),
    watchdog="30s",
    max_exposure=2.5,
)
RELAY = Expected(
    file="phs-gateway-relay.service",
    # the gateway's user and state directory: it marks events in the gateway's store
    user="phs-gateway",
    state_directory="phs-gateway",
    command="/opt/phs-sync/.venv/bin/phs-gateway relay --config /etc/phs-sync/gateway.toml "
    "--data-dir /var/lib/phs-gateway",
    families=frozenset({"AF_UNIX", "AF_INET", "AF_INET6"}),
    watchdog="30s",
    max_exposure=2.5,
)
EVERY_UNIT = pytest.mark.parametrize("expected", [EDGE, GATEWAY, RELAY], ids=lambda e: e.file)

HARDENING_ON = (
    "NoNewPrivileges",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "RestrictNamespaces",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "RestrictRealtime",
    "ProtectClock",
    "ProtectHostname",
    "RestrictSUIDSGID",
    "RemoveIPC",
    "PrivateIPC",
    "PrivateMounts",
    "PrivateUsers",
)


def load(expected: Expected) -> Unit:
    return parse_unit((UNITS / expected.file).read_text(encoding="utf-8"))


@EVERY_UNIT
def test_unit_runs_the_service_as_its_own_user_and_restarts_on_failure(
    expected: Expected,
) -> None:
    unit = load(expected)
    assert one(unit, "Service", "ExecStart") == expected.command
    assert one(unit, "Service", "User") == expected.user
    assert one(unit, "Service", "Group") == expected.user
    assert one(unit, "Service", "DynamicUser") == "no"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "RestartSec") == "5"
    assert "network-online.target" in one(unit, "Unit", "After").split()
    assert "network-online.target" in one(unit, "Unit", "Wants").split()
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


@EVERY_UNIT
def test_unit_writes_only_to_its_private_state_directory(expected: Expected) -> None:
    unit = load(expected)
    service = unit["Service"]
    assert one(unit, "Service", "StateDirectory") == expected.state_directory
    assert one(unit, "Service", "StateDirectoryMode") == "0700"
    assert one(unit, "Service", "UMask") == "0077"
    assert one(unit, "Service", "ProtectSystem") == "strict"
    # StateDirectory= is writable under ProtectSystem=strict; nothing else may be
    assert "ReadWritePaths" not in service
    assert expected.command.endswith(f"--data-dir /var/lib/{expected.state_directory}")


@EVERY_UNIT
def test_unit_is_hardened(expected: Expected) -> None:
    unit = load(expected)
    for key in HARDENING_ON:
        assert one(unit, "Service", key) == "yes", key
    assert one(unit, "Service", "CapabilityBoundingSet") == ""  # no capabilities at all
    assert one(unit, "Service", "SystemCallArchitectures") == "native"
    assert one(unit, "Service", "ProtectProc") == "invisible"
    assert one(unit, "Service", "ProcSubset") == "pid"
    families = one(unit, "Service", "RestrictAddressFamilies").split()
    assert frozenset(families) == expected.families


@EVERY_UNIT
def test_unit_is_type_notify_with_a_watchdog(expected: Expected) -> None:
    # READY=1 once serving, WATCHDOG=1 every WatchdogSec/2 (observability.sdnotify);
    # only the main process notifies (serve --workers: the supervisor speaks for all)
    unit = load(expected)
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "WatchdogSec") == expected.watchdog


def test_edge_unit_leaves_zeroconf_its_network() -> None:
    """Multicast DNS needs the host's network, every address and netlink to list
    the interfaces: no private network, no IP allow list on the edge node."""
    service = load(EDGE)["Service"]
    for key in ("PrivateNetwork", "IPAddressDeny", "IPAddressAllow", "RestrictNetworkInterfaces"):
        assert key not in service, key
    assert {"AF_NETLINK", "AF_INET", "AF_INET6"} <= set(
        one(load(EDGE), "Service", "RestrictAddressFamilies").split()
    )


@EVERY_UNIT
def test_deployment_guide_creates_the_service_user(expected: Expected) -> None:
    guide = DEPLOYMENT.read_text(encoding="utf-8")
    assert re.search(rf"useradd --system\b[^\n]*\\?\n?[^\n]*\b{expected.user}\b", guide)
    assert expected.file in guide


def _runnable_copy(expected: Expected, directory: Path) -> Path:
    """A copy of the unit whose ExecStart binary exists on this machine.

    ``systemd-analyze verify`` fails a unit whose ExecStart is not an
    executable file, and /opt/phs-sync exists only on a deployed box. The copy
    points at this venv's console script of the same name (or /bin/true when
    it is not installed) and keeps the arguments, so everything else is
    verified as written.
    """
    text = (UNITS / expected.file).read_text(encoding="utf-8")
    program = expected.command.split()[0]
    local = Path(sys.executable).parent / Path(program).name
    replacement = str(local) if local.exists() else (shutil.which("true") or "/bin/true")
    assert text.count(f"ExecStart={program} ") == 1
    copy = directory / expected.file  # same name: verify derives the unit type from it
    copy.write_text(text.replace(f"ExecStart={program} ", f"ExecStart={replacement} "))
    return copy


@needs_systemd_analyze
@EVERY_UNIT
def test_systemd_analyze_verify_accepts_the_unit(expected: Expected, tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    copy = _runnable_copy(expected, tmp_path)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # unknown keys and unparsable values are only warned about: fail on any
    # message that names our unit (messages about other units are not ours)
    about_us = [line for line in output.splitlines() if expected.file in line]
    assert about_us == []


def overall_exposure(expected: Expected, directory: Path) -> float:
    """``systemd-analyze security --offline=yes`` on (a runnable copy of) the unit."""
    assert SYSTEMD_ANALYZE is not None
    copy = _runnable_copy(expected, directory)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in result.stderr:  # before systemd 250 it needs a running systemd
        pytest.skip(f"this systemd-analyze has no --offline: {result.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@needs_systemd_analyze
@EVERY_UNIT
def test_systemd_analyze_security_rates_the_sandbox_ok(expected: Expected, tmp_path: Path) -> None:
    # 0 is a perfect sandbox, 10 none; issue 7 asks for at most 2.0 on the edge
    # node and 2.5 on the gateway's units. Ours measure 1.1 each on systemd 252
    # (docs/deployment.md): network services keep their sockets and the host's network.
    assert overall_exposure(expected, tmp_path) <= expected.max_exposure
