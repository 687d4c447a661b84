"""``/admin``: the admin page (HTML), its login and logout; ``…/admin/overview``: the
same figures as a document for scripts.

The page takes an admin of its tenant either by ``Authorization: Bearer``
(scripts, curl) or by the session cookie the login form sets
(``gateway.admin_sessions``). Anything else, a wrong or missing token, an
ended session, a token of another role, gets the login form with 401 and
never a figure. The overview is scoped to the admin's own tenant.
"""

from __future__ import annotations

from aiohttp import web

from gateway.admin_html import render_login, render_overview
from gateway.admin_overview import collect_overview
from gateway.admin_sessions import SESSION_LIFETIME, close_session, find_session, open_session
from gateway.auth import authenticate_token
from gateway.http import database, now, respond, settings
from gateway.registry import Role, TokenPrincipal, find_token
from observability.html_page import SECURITY_HEADERS
from shared.errors import MalformedBody

PAGE_PATH = "/admin"
COOKIE = "phs_admin"
# The login form's only field: a token is ~60 characters; anything far longer is not one.
MAX_TOKEN_CHARS = 200
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="phs-sync"'}


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=body, status=status, content_type="text/html", headers=SECURITY_HEADERS
    )


def _login_form(message: str | None, status: int = 401) -> web.Response:
    response = _html(render_login(message), status)
    response.headers.update(_CHALLENGE)
    return response


async def _admin_by_token(request: web.Request, token: str) -> TokenPrincipal | None:
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    async with database(request).read() as conn:
        principal = await find_token(conn, token)
    return principal if principal is not None and principal.role is Role.ADMIN else None


async def page(request: web.Request) -> web.Response:
    header = request.headers.get("Authorization")
    session_id = request.cookies.get(COOKIE)
    if header is not None:
        scheme, _, token = header.partition(" ")
        admin = (
            await _admin_by_token(request, token.strip()) if scheme.lower() == "bearer" else None
        )
        if admin is None:
            return _login_form("That bearer token is not an admin token of this gateway.")
    elif session_id:
        async with database(request).read() as conn:
            admin = await find_session(conn, session_id, now(request))
        if admin is None:
            response = _login_form("Your session has ended: log in again.")
            response.del_cookie(COOKIE, path=PAGE_PATH)
            return response
    else:
        return _login_form(None)
    moment = now(request)
    async with database(request).read() as conn:
        doc = await collect_overview(conn, admin.tenant_id, moment)
    return _html(render_overview(doc, moment, logout=header is None))


async def login(request: web.Request) -> web.Response:
    """The login form's POST: an admin token in, a session cookie out (303 to the page)."""
    try:
        form = await request.post()
    except ValueError as err:  # multipart without a boundary, a malformed part, …
        raise MalformedBody(f"the login form cannot be read: {str(err)[:100]}") from err
    token = form.get("token")
    admin = await _admin_by_token(request, token.strip()) if isinstance(token, str) else None
    if admin is None or not isinstance(token, str):
        return _login_form("That is not an admin token of this gateway.")
    async with database(request).write() as conn:
        session_id = await open_session(conn, token.strip(), admin, now(request))
    response = _see_page()
    response.set_cookie(
        COOKIE,
        session_id,
        path=PAGE_PATH,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        httponly=True,
        samesite="Strict",
        # Over TLS, or always when a TLS proxy fronts the gateway; plain http on
        # loopback works too.
        secure=request.secure or settings(request).admin_cookie_secure,
    )
    return response


async def logout(request: web.Request) -> web.Response:
    session_id = request.cookies.get(COOKIE)
    if session_id:
        async with database(request).write() as conn:
            await close_session(conn, session_id)
    response = _see_page()
    response.del_cookie(COOKIE, path=PAGE_PATH)
    return response


async def to_page(_request: web.Request) -> web.Response:
    """``GET /admin/login`` or ``/admin/logout`` (a bookmark, a reload): the page."""
    return _see_page()


def _see_page() -> web.Response:
    return web.Response(status=303, headers={"Location": PAGE_PATH, **SECURITY_HEADERS})


async def overview(request: web.Request) -> web.Response:
    """``GET …/admin/overview``: the admin page's figures (admin bearer token)."""
    admin = await authenticate_token(request, Role.ADMIN)
    async with database(request).read() as conn:
        doc = await collect_overview(conn, admin.tenant_id, now(request))
    return respond(request, 200, doc, {"Cache-Control": "no-store"})
