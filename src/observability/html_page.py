"""Plain HTML pages of both services: the edge status page and the gateway admin page.

One stylesheet, inline, allowed by its hash in the Content-Security-Policy: no
scripts, no external assets, nothing a browser fetches besides the page. Every
value reaches the markup through :func:`text` (escaped) or a helper built on
it; :class:`Html` marks fragments already escaped, so a raw string can never
be pasted in by mistake (mypy sees the difference).

Key figures carry a stable ``id`` and ``data-value`` (the raw value, not its
display form), so browser tests read them and compare with the JSON API.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NewType

from shared.errors import ValidationFailed
from shared.values import parse_timestamp

Html = NewType("Html", str)

CSS = """
:root{--fg:#1b1f24;--muted:#5b6570;--line:#d8dde3;--card:#fff;--bg:#f3f5f7;
--ok:#17663a;--ok-bg:#e3f4e9;--warn:#8a5a00;--warn-bg:#fff3d6;--bad:#a1161b;--bad-bg:#fde7e8}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
header{background:#1d2b3a;color:#fff;padding:.9rem 1rem;display:flex;flex-wrap:wrap;
align-items:center;justify-content:space-between;gap:.5rem 1rem}
header h1{margin:0;font-size:1.25rem;font-weight:600}
header p{margin:.2rem 0 0;color:#c9d3dd;font-size:.85rem}
header a,header button{color:#fff}
main{max-width:75rem;margin:0 auto;padding:1rem}
.grid{display:grid;gap:1rem;grid-template-columns:repeat(auto-fit,minmax(19rem,1fr))}
.stats{display:grid;gap:.6rem;grid-template-columns:repeat(auto-fit,minmax(8.5rem,1fr))}
.stat{border:1px solid var(--line);border-radius:6px;padding:.5rem .7rem;background:var(--card)}
.stat .num{font-size:1.6rem;font-weight:650;line-height:1.2}
.stat .label{color:var(--muted);font-size:.85rem}
.stat.warn{border-color:#e9c46a}.stat.bad{border-color:#e6a0a3}
.stat.warn .num{color:var(--warn)}.stat.bad .num{color:var(--bad)}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;
padding:.8rem 1rem;margin-bottom:1rem;min-width:0}
.grid section{margin-bottom:0}
.grid+section,.grid+.grid,.stats+.grid{margin-top:1rem}
h2{font-size:1rem;margin:0 0 .6rem;color:#26323f}
h3{font-size:.9rem;margin:1rem 0 .4rem;color:#26323f}
dl{margin:0;display:grid;grid-template-columns:auto 1fr;gap:.3rem .8rem}
dt{color:var(--muted)}
dd{margin:0;font-weight:600;overflow-wrap:break-word;min-width:0}
dd small,td small{font-weight:400;color:var(--muted)}
.big{font-size:1.5rem;line-height:1.2}
.pill{display:inline-block;padding:0 .5rem;border-radius:999px;font-size:.85rem;font-weight:600}
.ok{color:var(--ok);background:var(--ok-bg)}
.warn{color:var(--warn);background:var(--warn-bg)}
.bad{color:var(--bad);background:var(--bad-bg)}
.none{color:var(--muted)}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:.3rem .6rem .3rem 0;border-bottom:1px solid var(--line);
vertical-align:top}
th{color:var(--muted);font-weight:600;white-space:nowrap}
td.cell{text-align:center;padding-right:0}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85em;
overflow-wrap:anywhere}
form.login{max-width:24rem;margin:3rem auto}
form label{display:block;margin-bottom:.3rem;color:var(--muted)}
input[type=password]{width:100%;padding:.5rem;font:inherit;border:1px solid var(--line);
border-radius:6px}
button{font:inherit;padding:.45rem 1rem;border-radius:6px;border:1px solid #1d2b3a;
background:#1d2b3a;color:#fff;cursor:pointer;margin-top:.6rem}
header form{display:inline;margin:0}
header button{margin:0;padding:.1rem .6rem;background:transparent;border-color:#c9d3dd;
font-size:.85rem}
p.error{color:var(--bad)}
section.notice-warn{border-color:#e9c46a;background:var(--warn-bg)}
section.notice-bad{border-color:#e6a0a3;background:var(--bad-bg)}
section.notice-warn ul,section.notice-bad ul{margin:0;padding-left:1.2rem}
footer{color:var(--muted);font-size:.8rem;text-align:center;padding:0 1rem 1.5rem}
@media (max-width:40rem){
main{padding:.6rem}
table.stack,table.stack tbody,table.stack tr,table.stack td{display:block}
table.stack thead{display:none}
table.stack tr{border-bottom:1px solid var(--line);padding:.35rem 0}
table.stack td{border:0;padding:.1rem 0;display:grid;grid-template-columns:6.5rem 1fr;gap:.6rem}
table.stack td::before{content:attr(data-label);color:var(--muted);font-weight:600}
}
""".strip()

_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode("ascii")

# No script may run, no asset load, no form post elsewhere, no framing.
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def text(value: Any) -> Html:
    """Any value, escaped for HTML text and attributes (None: an empty string)."""
    return Html(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[Html]) -> Html:
    return Html("".join(parts))


def document(title: str, header: Html, body: Html, refresh_seconds: int | None = None) -> Html:
    """A whole page: ``header`` and ``body`` are escaped fragments."""
    refresh = (
        Html(f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">')
        if refresh_seconds
        else Html("")
    )
    return Html(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{refresh}<title>{text(title)}</title><style>{CSS}</style></head>"
        f"<body><header>{header}</header><main>{body}</main></body></html>"
    )


def pill(label: str, tone: str) -> Html:
    """A coloured label; ``tone`` is ok, warn, bad or none."""
    return Html(f'<span class="pill {text(tone)}">{text(label)}</span>')


def figure(
    key: str,
    label: str,
    value: Any,
    shown: Html | None = None,
    note: Html | None = None,
    big: bool = False,
) -> Html:
    """One ``<dt>``/``<dd>`` pair; the ``dd`` has ``id=key`` and ``data-value`` (the raw
    value: ``""`` for None, ``true``/``false`` for booleans)."""
    raw = "true" if value is True else "false" if value is False else value
    display = shown if shown is not None else text("—" if value is None else value)
    extra = Html(f" <small>{note}</small>") if note else Html("")
    klass = ' class="big"' if big else ""
    return Html(
        f"<dt>{text(label)}</dt>"
        f'<dd id="{text(key)}" data-value="{text(raw)}"{klass}>{display}{extra}</dd>'
    )


def field(name: str, value: Any, shown: Html | None = None) -> Html:
    """A table cell's content with ``data-field`` and the raw ``data-value``."""
    raw = "true" if value is True else "false" if value is False else value
    display = shown if shown is not None else text("—" if value is None else value)
    return Html(f'<span data-field="{text(name)}" data-value="{text(raw)}">{display}</span>')


def card(title: str, content: Html, key: str | None = None) -> Html:
    ident = f' id="{text(key)}"' if key else ""
    return Html(f"<section{ident}><h2>{text(title)}</h2>{content}</section>")


def figures(*parts: Html) -> Html:
    return Html(f"<dl>{join(parts)}</dl>")


def table(
    key: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Html]],
    empty: str,
    row_keys: Sequence[str] | None = None,
    stack: bool = True,
) -> Html:
    """A table with ``id=key`` (``data-rows``: how many); ``rows`` are escaped cells.
    ``row_keys`` gives each row a ``data-key`` (its record's id). ``stack``: on a
    phone each row becomes a block of "column: value" lines instead of scrolling."""
    if not rows:
        return Html(f'<p id="{text(key)}" data-rows="0" class="none">{text(empty)}</p>')
    head = join(Html(f"<th>{text(c)}</th>") for c in columns)
    body = join(
        Html(
            "<tr"
            + (f' data-key="{text(row_keys[i])}"' if row_keys else "")
            + ">"
            + join(
                Html(f'<td data-label="{text(c)}"><span>{cell}</span></td>')
                for c, cell in zip(columns, row, strict=True)
            )
            + "</tr>"
        )
        for i, row in enumerate(rows)
    )
    stacked = ' class="stack"' if stack else ""
    return Html(
        f'<div class="scroll"><table id="{text(key)}" data-rows="{len(rows)}"{stacked}>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def age(seconds: float | None) -> str:
    """``3 min``, ``2 h 5 min``, ``4 d 3 h``: a duration people read at a glance."""
    if seconds is None:
        return "—"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, hours, days = whole // 60, whole // 3600, whole // 86400
    if hours == 0:
        return f"{minutes} min"
    if days == 0:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


def stamp(value: str | None) -> Html:
    """A contract timestamp, shorter: ``2026-11-25 12:00:03Z``."""
    if not value:
        return text("never")
    return text(value.replace("T", " ").split(".")[0] + "Z" if value.endswith("Z") else value)


def ago(value: str | None, now: datetime) -> str | None:
    """``5 min ago`` (``in 5 min`` for a time ahead of ``now``); None if unreadable."""
    if not value:
        return None
    try:
        seconds = (now - parse_timestamp(value, "stamp")).total_seconds()
    except ValidationFailed:
        return None
    return f"{age(seconds)} ago" if seconds >= 0 else f"in {age(-seconds)}"


def moment(value: str | None, now: datetime) -> Html:
    """How long ago, then the time itself: ``5 min ago 2026-11-25 12:00:03Z``."""
    relative = ago(value, now)
    if relative is None:
        return stamp(value)
    return Html(f"{text(relative)} <small>{stamp(value)}</small>")


def stat(
    key: str,
    label: str,
    value: Any,
    tone: str = "",
    note: str | None = None,
    shown: str | None = None,
) -> Html:
    """A tile with one big figure (``id=key``, the raw value in ``data-value``;
    ``shown``: its display form) and its label."""
    extra = f"<small> {text(note)}</small>" if note else ""
    display = text("—" if value is None else value) if shown is None else text(shown)
    return Html(
        f'<div class="stat {text(tone)}"><div class="num" id="{text(key)}" '
        f'data-value="{text(value)}">{display}</div>'
        f'<div class="label">{text(label)}{extra}</div></div>'
    )


def stats(*tiles: Html) -> Html:
    return Html(f'<div class="stats">{join(tiles)}</div>')
