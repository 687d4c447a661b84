"""A private network namespace standing in for an office LAN (demo and tests).

Its only interface is its own loopback, brought up with multicast on and a
route for 224.0.0.0/4, so mDNS works between the processes inside it and
never reaches a real network. Needs root and ``ip`` (iproute2).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess


class NamespaceUnavailable(RuntimeError):
    """A private network namespace cannot be made here; the message says why."""


def unavailable_reason() -> str | None:
    """Why a namespace cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to create a private network namespace (ip netns add)"
    if shutil.which("ip") is None:
        return "needs the ip command (Debian package iproute2)"
    return None


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise NamespaceUnavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def create(name: str) -> None:
    """Make the namespace with its multicast-capable loopback."""
    reason = unavailable_reason()
    if reason is not None:
        raise NamespaceUnavailable(reason)
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "set", "lo", "multicast", "on")
        _ip("-n", name, "route", "add", "224.0.0.0/4", "dev", "lo")
    except NamespaceUnavailable:
        delete(name)
        raise


def delete(name: str) -> None:
    """Kill whatever still runs inside, then remove the namespace."""
    for pid in _ip("netns", "pids", name).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    _ip("netns", "del", name)


def exec_prefix(name: str) -> list[str]:
    """Prefix of a command to run inside (``ip netns exec`` execs: the pid is the command's)."""
    return ["ip", "netns", "exec", name]
