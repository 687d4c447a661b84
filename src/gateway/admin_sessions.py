"""Browser sessions of the admin page.

A browser cannot send ``Authorization: Bearer`` when it follows a link, so
the admin logs in once: the admin token is posted by a form, checked, and
exchanged for a random session id kept in a cookie (HttpOnly, SameSite=Strict,
Path=/admin, with an expiry). The gateway stores only the SHA-256 of the
session id, with the token's hash: the session ends at its expiry, at a
logout, or as soon as its token no longer exists.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.schema import admin_sessions, tokens
from gateway.registry import Role, TokenPrincipal, token_hash
from shared.values import format_timestamp

SESSION_LIFETIME = timedelta(hours=8)  # a working day; then log in again


async def open_session(
    conn: AsyncConnection, token: str, principal: TokenPrincipal, now: datetime
) -> str:
    """A new session for an admin token's holder; returns the id for the cookie.
    Expired sessions are cleared on the way (logins are rare)."""
    await conn.execute(
        admin_sessions.delete().where(admin_sessions.c.expires_at <= format_timestamp(now))
    )
    session_id = secrets.token_urlsafe(32)
    await conn.execute(
        admin_sessions.insert().values(
            session_hash=token_hash(session_id),
            token_hash=token_hash(token),
            tenant_id=principal.tenant_id,
            created_at=format_timestamp(now),
            expires_at=format_timestamp(now + SESSION_LIFETIME),
        )
    )
    return session_id


async def find_session(
    conn: AsyncConnection, session_id: str, now: datetime
) -> TokenPrincipal | None:
    """The admin behind a live session, or None (unknown, expired, token gone)."""
    row = (
        await conn.execute(
            sa.select(tokens.c.token_id, tokens.c.tenant_id, tokens.c.role)
            .join(admin_sessions, admin_sessions.c.token_hash == tokens.c.token_hash)
            .where(
                admin_sessions.c.session_hash == token_hash(session_id),
                admin_sessions.c.expires_at > format_timestamp(now),
            )
        )
    ).first()
    if row is None or row.role != Role.ADMIN.value:
        return None
    return TokenPrincipal(row.token_id, row.tenant_id, Role(row.role))


async def close_session(conn: AsyncConnection, session_id: str) -> None:
    await conn.execute(
        admin_sessions.delete().where(admin_sessions.c.session_hash == token_hash(session_id))
    )
