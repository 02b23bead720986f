"""HTML building blocks of the console: every value escaped, one layout for every page.

Pages are plain server-rendered HTML that reads fully without JavaScript; the one small
script (``/static/console.js``) only refreshes parts of a page live.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from urllib.parse import quote

__all__ = ["NAV", "Html", "esc", "link", "page", "table", "url"]

NAV = (
    ("/", "Overview"),
    ("/services", "Services"),
    ("/topology", "Topology"),
    ("/proxies", "Proxies"),
    ("/events", "Events"),
    ("/policies", "Policies"),
    ("/certificates", "Certificates"),
)


class Html(str):
    """Markup that is already safe (not escaped again)."""

    __slots__ = ()


def esc(value: object) -> Html:
    """``value`` as text in HTML (markup passes through as it is)."""
    if isinstance(value, Html):
        return value
    return Html(escape(str(value), quote=True))


def url(*parts: str) -> str:
    """A path from ``parts``, each percent-encoded (slashes inside a part too)."""
    return "/" + "/".join(quote(p, safe="") for p in parts)


def link(href: str, text: object, **attrs: str) -> Html:
    extra = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items())
    return Html(f'<a href="{esc(href)}"{extra}>{esc(text)}</a>')


def join(parts: Iterable[object], sep: str = "") -> Html:
    return Html(sep.join(esc(p) for p in parts))


def table(
    caption: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    empty: str = "None.",
    table_id: str = "",
) -> Html:
    """A table with a caption and column headers; ``empty`` when there are no rows."""
    body = ["<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows]
    ident = f' id="{esc(table_id)}"' if table_id else ""
    if not body:
        return Html(f'<h2{ident}>{esc(caption)}</h2><p class="empty">{esc(empty)}</p>')
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    return Html(
        f"<table{ident}><caption>{esc(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def badge(text: str, kind: str) -> Html:
    """A short status word with its meaning in text, not only in colour."""
    return Html(f'<span class="badge {esc(kind)}">{esc(text)}</span>')


def page(
    title: str,
    main: Html,
    *,
    active: str = "",
    who: str = "",
    csrf: str = "",
    live: str = "",
) -> bytes:
    """A whole page. ``live``: what the script keeps fresh on it (``events``: the main
    part reloads on mesh events; ``poll``: every few seconds; ``feed``: the events
    list takes events as they come)."""
    nav = "".join(
        f'<li><a href="{href}"{" aria-current=page" if href == active else ""}>{esc(name)}</a></li>'
        for href, name in NAV
    )
    account = ""
    if who:
        account = (
            f'<form method="post" action="/logout" class="logout">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            f'<span>{esc(who)}</span> <button type="submit">Log out</button></form>'
        )
    live_attr = f' data-live="{esc(live)}"' if live else ""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · APG mesh console</title>"
        '<link rel="stylesheet" href="/static/console.css">'
        '<script src="/static/console.js" defer></script>'
        "</head><body>"
        '<a class="skip" href="#main">Skip to content</a>'
        '<header><span class="brand">APG mesh</span>'
        f'<nav aria-label="Console"><ul>{nav}</ul></nav>{account}</header>'
        f'<main id="main"{live_attr}><h1>{esc(title)}</h1>{main}</main>'
        "</body></html>\n"
    ).encode()
