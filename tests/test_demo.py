"""``make demo`` as a newcomer runs it (``python -m edgenode.demo``), as a real subprocess.

The demo starts a real gateway and a real edge node, pairs real field
devices and syncs them; these tests only watch its console and the URLs it
prints. They check that it ends with the summary (figures read back from the
services) and the edge status page URL; that the URL answered from this host
while the services were up (the demo fetches it itself before printing it,
and the second test fetches it too); that the services' JSON logs went to
files, not the console; and that it stops cleanly: at once with ``--exit``,
and on Ctrl-C (SIGINT to its process group, as a terminal sends it) when it
was serving.

The second test runs the default mode: inside a private network namespace
when root with ``ip`` (the edge is then reachable from the host only through
the demo's forward), else the loopback fallback.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from canaries import patient_prefix, scan_output
from edgenode.demo import NODE_ID

RUN_SECONDS = 180  # a loaded two-core CI box; the demo itself takes ~20 s when idle
URL = re.compile(r"^Edge status page: +(http://127\.0\.0\.1:\d+/)  \(answered 200 \(text/html")
GATEWAY_URL = re.compile(r"^Gateway: +(http://127\.0\.0\.1:\d+/readyz)  \(answered 200 ")
ADMIN_URL = re.compile(r"^Gateway admin page: +(http://127\.0\.0\.1:\d+/admin)  \(answered 200 ")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
OPEN = re.compile(r"^Open (http://127\.0\.0\.1:\d+/) — press Ctrl-C to stop")


def demo_command(data_dir: Path, *flags: str) -> list[str]:
    # Its patients are canaries: its console and its services' logs (files under
    # tmp_path) and stores are scanned for them (tests/canaries.py).
    return [
        sys.executable,
        "-m",
        "edgenode.demo",
        "--data-dir",
        str(data_dir),
        "--patient-prefix",
        patient_prefix(),
        *flags,
    ]


def get(url: str) -> tuple[int, str]:
    with NO_PROXY.open(url, timeout=10) as resp:
        return resp.status, resp.read().decode()


def refused(url: str) -> bool:
    try:
        get(url)
    except (urllib.error.URLError, ConnectionError):
        return True
    return False


def check_summary(lines: list[str], data_dir: Path) -> str:
    """The closing summary is there, with figures that say everything arrived;
    returns the status page URL it printed."""
    text = "\n".join(lines)
    start = next(i for i, line in enumerate(lines) if line.startswith("Summary — "))
    labels = [line[:12] for line in lines[start + 1 :] if re.match(r"^  [a-z]+ +\S", line)]
    for label in ("tablets", "edge", "gateway", "reports", "events", "problems"):
        assert f"  {label:<10}" in labels, text
    assert re.search(r"tablets +\d+ paired; \d+ records made offline: .* 0 still pending", text)
    assert re.search(r"outbox depth 0\b", text), text
    assert "reports   1 signed at the edge, 0 waiting in its outbox; 1 at the gateway" in text
    assert "problems  none" in text, text
    recorded = re.search(r"gateway   transitions in the items' histories: (.*)", text)
    assert recorded is not None and "applied" in recorded.group(1), text
    urls = [m.group(1) for line in lines if (m := URL.match(line))]
    assert len(urls) == 1, text
    assert any(GATEWAY_URL.match(line) for line in lines), text
    # The services' JSON log lines went to files; the console is for people.
    assert not [line for line in lines if line.lstrip().startswith('{"')], text
    for name in ("gateway.log", "edge.log"):
        assert (data_dir / name).stat().st_size > 0
    assert f"Logs and databases: {data_dir}/ (gateway.log, edge.log)" in text
    return urls[0]


def test_demo_exit_ends_with_summary_and_a_status_url_that_answered(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    done = subprocess.run(
        demo_command(data_dir, "--exit", "--no-discovery", "--items", "20", "--tablets", "2"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
    )
    scan_output(done.stdout + done.stderr, "the demo's console")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line[:5] for line in lines if line.startswith("[")] == [
        f"[{n}/8]" for n in range(1, 9)
    ], done.stdout
    assert re.search(r"2/2 tablets: tab-2 pushed \d+ records", done.stdout), done.stdout
    url = check_summary(lines, data_dir)
    assert lines[-1].startswith("stopping the gateway and the edge"), done.stdout
    assert refused(url), f"{url} still answers after the demo stopped"


def test_demo_serves_until_ctrl_c(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    demo = subprocess.Popen(
        demo_command(data_dir, "--serve-for", "120", "--items", "20", "--tablets", "2"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as in a terminal
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + RUN_SECONDS
    try:
        open_url = None
        while open_url is None:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "\n".join(seen)
            seen.append(line)
            if match := OPEN.match(line):
                open_url = match.group(1)
        url = check_summary(seen, data_dir)
        assert open_url == url
        # The page loads from here, the host, while the demo serves.
        status, page = get(url)
        assert status == 200 and "<html" in page.lower(), page[:500]
        gateway = next(m.group(1) for line in seen if (m := GATEWAY_URL.match(line)))
        assert get(gateway)[0] == 200
        # The gateway's admin page, with the admin token the demo left for the newcomer.
        admin_page = next(m.group(1) for line in seen if (m := ADMIN_URL.match(line)))
        token_file = data_dir / "admin-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        request = urllib.request.Request(admin_page, headers={"Authorization": f"Bearer {token}"})
        with NO_PROXY.open(request, timeout=10) as resp:
            assert resp.status == 200 and NODE_ID in resp.read().decode()
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C
        assert demo.wait(timeout=60) == 0, "\n".join(seen)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    while (line := lines.get(timeout=10)) is not None:
        seen.append(line)
    assert demo.stdout is not None
    demo.stdout.close()
    scan_output("\n".join(seen), "the demo's console")
    assert seen[-1] == "stopping the gateway and the edge", "\n".join(seen)
    assert refused(url), f"{url} still answers after Ctrl-C"
