"""Session tokens: HS256 JWTs naming a user and the sessions it may join. Pure apart from PyJWT.

Claims: `sub` (user id), `sessions` (session ids), `iat`, `exp`. Only HS256 is
accepted, so `alg: none` and public-key confusion are refused; an expired or
forged token is refused with the reason in words.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
MAX_SESSIONS_PER_TOKEN = 200


class TokenError(Exception):
    """The token cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token grants. `sessions` is a tuple, not a set: a socket holds its
    claims for its whole life, most tokens name a few sessions, and a one-element
    frozenset costs 216 bytes (a tuple 48); a join looks it up once. The token's `iat` is
    checked (required) but not kept: nothing reads it, and each socket would hold it (an
    int of its own, 32 bytes, and a slot)."""

    user_id: str
    sessions: tuple[str, ...]
    expires_at: int

    def may_join(self, session_id: str) -> bool:
        return session_id in self.sessions

    def granted(self, session_id: str) -> str | None:
        """The token's own copy of session_id if it names it, else None. A joined socket
        keys its room with it, so the frame's copy of the id does not live on."""
        for granted in self.sessions:
            if granted == session_id:
                return granted
        return None


class TokenAuthority:
    """Issues and verifies tokens with one secret; time comes from the caller."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        if len(secret.encode()) < 32:
            # RFC 7518 3.2: an HS256 key is at least as long as the hash (32 bytes).
            raise ValueError("the JWT secret must be at least 32 bytes")
        self._secret = secret
        self._ttl_s = ttl_s

    @staticmethod
    def random_secret() -> str:
        return secrets.token_urlsafe(32)

    def issue(self, user_id: str, sessions: Iterable[str], now: float) -> tuple[str, int]:
        """A signed token and its expiry (seconds since the epoch). Keeps the newest sessions."""
        ordered = list(dict.fromkeys(sessions))[-MAX_SESSIONS_PER_TOKEN:]
        iat = int(now)
        exp = iat + self._ttl_s
        token = jwt.encode(
            {"sub": user_id, "sessions": ordered, "iat": iat, "exp": exp},
            self._secret,
            algorithm=ALGORITHM,
        )
        return token, exp

    def verify(self, token: str, now: float) -> Claims:
        """The token's claims, or TokenError saying why it is refused."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"malformed token: {exc}") from None
        if header.get("alg") != ALGORITHM:
            raise TokenError(
                f"token algorithm {header.get('alg')!r} is not accepted; only {ALGORITHM}"
            )
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "sub"], "verify_exp": False},
            )
        except jwt.InvalidSignatureError:
            raise TokenError("token signature is invalid") from None
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= now:
            raise TokenError("token has expired")
        sessions = claims.get("sessions", [])
        user_id = claims.get("sub")
        if not isinstance(user_id, str) or not user_id:
            raise TokenError("token names no user (sub)")
        if not isinstance(sessions, list) or not all(isinstance(s, str) for s in sessions):
            raise TokenError("token claim 'sessions' must be a list of session ids")
        return Claims(user_id, tuple(dict.fromkeys(sessions)), exp)
