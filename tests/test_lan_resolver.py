"""An independent resolver sees the edge's advert (issue 4).

``dig`` (bind9-dnsutils) asks the edge node's mDNS responder directly, as a
legacy unicast query to port 5353 inside the test's private namespace: the
PTR lists the node, SRV gives the tablet API's port, TXT the contract's keys.
Only the edge runs in this namespace, so only it can answer.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncZeroconf

from lan.browser import Browser
from lan_site import INTERFACE, LanSite, eventually
from netns import NetworkNamespace
from shared.discovery import EDGE_SERVICE, EdgeAdvert, edge_advert

pytestmark = pytest.mark.skipif(
    shutil.which("dig") is None,
    reason="needs dig (Debian package bind9-dnsutils; .ci/run installs it)",
)


async def _seconds_to_forget_after_sigterm(pid: int) -> float:
    zc = AsyncZeroconf(interfaces=[INTERFACE], ip_version=IPVersion.V4Only)
    seen, gone = asyncio.Event(), asyncio.Event()

    async def on_seen(_advert: EdgeAdvert) -> None:
        seen.set()

    async def on_gone(_name: str) -> None:
        gone.set()

    browser = Browser(zc, EDGE_SERVICE, edge_advert, on_seen, on_gone)
    await browser.start()
    try:
        await asyncio.wait_for(seen.wait(), 10)
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        await asyncio.wait_for(gone.wait(), 30)
        return time.monotonic() - started
    finally:
        await browser.stop()
        await zc.async_close()


def dig(netns: NetworkNamespace, name: str, rtype: str) -> list[str]:
    done = netns.run(
        "dig", "+short", "+time=2", "+tries=1", "@127.0.0.1", "-p", "5353", name, rtype
    )
    if done.returncode == 9:  # no answer (yet): nobody listens on 5353
        return []
    assert done.returncode == 0, done.stdout + done.stderr
    return [line for line in done.stdout.splitlines() if line and not line.startswith(";")]


async def test_dig_sees_the_edge_advert_and_its_withdrawal(
    netns: NetworkNamespace, tmp_path: Path
) -> None:
    site = LanSite(netns, tmp_path)
    edge_dir = site.init_edge("edge", "edge-01", enroll=False)
    port = netns.port()
    edge = site.edge("edge", edge_dir, port)
    try:
        await site.start_edge(edge, port)

        async def ptr() -> list[str]:
            return dig(netns, "_phs-edge._tcp.local", "PTR")

        assert await eventually(ptr, "the PTR answer", 15) == ["edge-01._phs-edge._tcp.local."]
        srv = dig(netns, "edge-01._phs-edge._tcp.local", "SRV")
        assert srv == [f"0 0 {port} edge-01.local."]
        assert dig(netns, "edge-01.local", "A") == ["127.0.0.1"]
        (txt,) = dig(netns, "edge-01._phs-edge._tcp.local", "TXT")
        assert txt.split(" ") == [
            '"v=1"',
            '"node=edge-01"',
            '"tenant=t1"',
            f'"fp={site.fingerprint(edge_dir)}"',
            '"path=/api/v1/population-health"',
        ]

        # SIGTERM, as systemd stops it: the node sends goodbyes, so a browser
        # forgets it at once instead of when the records' TTL (120 s) runs out.
        assert edge.process is not None
        seconds = await netns.acall(lambda: _seconds_to_forget_after_sigterm(edge.process.pid))
        assert seconds < 5
        await edge.stop()
    finally:
        site.stop_all()
