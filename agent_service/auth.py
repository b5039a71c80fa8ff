"""Who is calling: a credential in, a Caller out. Pure apart from PyJWT's signature check.

A backend caller presents one of:

- a bearer token in the `authorization` metadata (`Bearer <JWT>`): HS256 with the
  service's shared secret, or RS256 / ES256 checked with a public key file. Claims:
  `sub` (a user id or a service's name), `scope` (space-separated: read, chat,
  tools, admin), optional `users` (the user ids it may act for; default `[sub]`),
  `aud` = AUDIENCE, `exp`.
- a client certificate (mTLS), whose common name or a subject alternative name is
  listed in the `mtls_identities` setting with its scopes.

A bearer token, when present, is the credential (a bad one is refused even on an
mTLS connection). With no credential configured at all (allowed on loopback, see
listen_refusal), every caller is OPEN_CALLER.

What the scopes grant is decided in access.py; this module only says who calls.
Time comes from the caller (`now`, seconds since the epoch), so it tests without
a clock.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from agent_service.errors import Unauthenticated

SCOPES = ("read", "chat", "tools", "admin")
AUDIENCE = "agent-relay.grpc"  # a browser token of the edge (no aud) is never a backend token
HMAC_ALGORITHM = "HS256"
KEY_ALGORITHMS = ("RS256", "ES256")
LEEWAY_S = 5  # clock skew tolerated between the minting host and the service
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key is at least as long as the hash
MAX_SUBJECT_CHARS = 128
CACHED_TOKENS = 4096  # verified tokens remembered: ~1 KiB each
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: who it is, what it may do, and for which users.

    `users` are the user ids it may act for; an `admin` caller acts for every user.
    `via` says how it authenticated: jwt, mtls or open (no credentials configured)."""

    subject: str
    scopes: frozenset[str]
    users: frozenset[str] = field(default_factory=frozenset)
    via: str = "jwt"

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def may_act_for(self, user_id: str) -> bool:
        return self.admin or user_id in self.users


OPEN_CALLER = Caller("anonymous", frozenset(SCOPES), via="open")


def parse_scopes(text: str) -> frozenset[str]:
    """The known scopes named in a space-separated list; unknown ones grant nothing."""
    return frozenset(part for part in text.split() if part in SCOPES)


def validate_scopes(text: str) -> frozenset[str]:
    """Like parse_scopes, but an unknown scope is an error (for what we mint or configure)."""
    unknown = [part for part in text.split() if part not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}: scopes are {' '.join(SCOPES)}")
    return frozenset(text.split())


def parse_identities(entries: Iterable[str]) -> dict[str, frozenset[str]]:
    """`NAME=SCOPES` entries (SCOPES space-separated) as a mapping. Raises ValueError."""
    identities: dict[str, frozenset[str]] = {}
    for entry in entries:
        name, sep, scopes = entry.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"mtls identity {entry!r} is not NAME=SCOPES")
        identities[name] = validate_scopes(scopes)
    return identities


class TokenVerifier:
    """Verifies bearer tokens with the shared secret and/or a public key.

    A token whose signature checked out is remembered (the newest CACHED_TOKENS), so a
    backend that sends the same token on every call pays for the signature once; its
    times are still checked against `now` on every call."""

    def __init__(self, secret: str = "", public_key_pem: bytes | None = None) -> None:
        self._verified: OrderedDict[str, tuple[Caller, float, float]] = OrderedDict()
        if secret and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"the auth JWT secret must be at least {MIN_SECRET_BYTES} bytes")
        self._keys: dict[str, Any] = {}
        if secret:
            self._keys[HMAC_ALGORITHM] = secret
        if public_key_pem is not None:
            from cryptography.hazmat.primitives.asymmetric import ec, rsa
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            key = load_pem_public_key(public_key_pem)
            if isinstance(key, rsa.RSAPublicKey):
                self._keys["RS256"] = key
            elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
                self._keys["ES256"] = key
            else:
                raise ValueError("the auth public key must be RSA or EC P-256")

    @classmethod
    def from_files(cls, secret: str, public_key_file: Path | None) -> TokenVerifier:
        pem = public_key_file.read_bytes() if public_key_file is not None else None
        return cls(secret, pem)

    def verify(self, token: str, now: float) -> Caller:
        """The caller a token names. Raises Unauthenticated saying why it is refused."""
        known = self._verified.get(token)
        if known is None:
            known = self._verify_signature(token)
            self._verified[token] = known
            if len(self._verified) > CACHED_TOKENS:
                self._verified.popitem(last=False)
        else:
            self._verified.move_to_end(token)
        caller, exp, nbf = known
        if exp + LEEWAY_S <= now:
            raise _refused("the bearer token has expired", "TOKEN_EXPIRED")
        if nbf - LEEWAY_S > now:
            raise _refused("the bearer token is not valid yet (nbf)", "TOKEN_NOT_YET_VALID")
        return caller

    def _verify_signature(self, token: str) -> tuple[Caller, float, float]:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg", "")
        except jwt.PyJWTError:
            raise _refused("the bearer token is not a JWT", "TOKEN_MALFORMED") from None
        key = self._keys.get(algorithm)
        if key is None:
            accepted = " or ".join(self._keys) or "none"
            raise _refused(
                f"the bearer token's algorithm {algorithm!r} is not accepted here ({accepted})",
                "TOKEN_ALGORITHM",
            )
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=AUDIENCE,
                # times are checked against `now` below, not against PyJWT's own clock
                options={
                    "require": ["sub", "exp", "aud"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise _refused(
                f"the bearer token is not meant for this service (aud must be {AUDIENCE!r})",
                "TOKEN_AUDIENCE",
            ) from None
        except jwt.InvalidSignatureError:
            raise _refused("the bearer token's signature is invalid", "TOKEN_SIGNATURE") from None
        except jwt.PyJWTError as exc:
            raise _refused(f"the bearer token is invalid: {exc}", "TOKEN_INVALID") from None
        return _caller_from_claims(claims)


def _caller_from_claims(claims: Mapping[str, Any]) -> tuple[Caller, float, float]:
    """The caller, `exp` and `nbf` of verified claims (times are checked by the caller)."""
    exp, nbf, sub, users = (
        claims.get("exp"),
        claims.get("nbf", 0),
        claims.get("sub"),
        claims.get("users"),
    )
    if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
        raise _refused("the bearer token's exp and nbf must be numbers", "TOKEN_INVALID")
    if not isinstance(sub, str) or not 0 < len(sub) <= MAX_SUBJECT_CHARS:
        raise _refused("the bearer token's sub must be 1-128 characters", "TOKEN_INVALID")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise _refused("the bearer token's scope must be a space-separated string", "TOKEN_INVALID")
    if users is None:
        allowed = frozenset({sub})
    elif isinstance(users, list) and all(isinstance(u, str) for u in users):
        allowed = frozenset(users)
    else:
        raise _refused("the bearer token's users must be a list of user ids", "TOKEN_INVALID")
    return Caller(sub, parse_scopes(scope), allowed, via="jwt"), float(exp), float(nbf)


def mint_token(
    key: Any,
    *,
    subject: str,
    scopes: str,
    ttl_s: int,
    now: float,
    users: Sequence[str] | None = None,
    algorithm: str = HMAC_ALGORITHM,
) -> str:
    """A signed bearer token for this service (what `agent-relay token` prints)."""
    validate_scopes(scopes)
    if not 0 < len(subject) <= MAX_SUBJECT_CHARS:
        raise ValueError("sub must be 1-128 characters")
    if ttl_s <= 0:
        raise ValueError("ttl must be at least 1 second")
    claims: dict[str, Any] = {
        "sub": subject,
        "scope": " ".join(scopes.split()),
        "aud": AUDIENCE,
        "iat": int(now),
        "exp": int(now) + ttl_s,
    }
    if users is not None:
        claims["users"] = list(users)
    return jwt.encode(claims, key, algorithm=algorithm)


@dataclass(frozen=True)
class Authenticator:
    """Turns a call's metadata and TLS peer into a Caller (see the module docstring).

    `verifier` None and no `identities`: nothing is configured, and every call is
    OPEN_CALLER (the server only allows that on loopback, or when told it is insecure)."""

    verifier: TokenVerifier | None = None
    identities: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.verifier is None and not self.identities

    def authenticate(
        self,
        metadata: Iterable[tuple[str, str | bytes]],
        auth_context: Mapping[str, Iterable[bytes]],
        now: float,
    ) -> Caller:
        """The caller. Raises Unauthenticated (missing, bad or expired credential)."""
        if self.open:
            return OPEN_CALLER
        token = bearer_token(metadata)
        if token is not None:
            if self.verifier is None:
                raise _refused("this service does not accept bearer tokens", "TOKEN_NOT_ACCEPTED")
            return self.verifier.verify(token, now)
        names = certificate_names(auth_context)
        for name in names:
            scopes = self.identities.get(name)
            if scopes is not None:
                return Caller(name, scopes, frozenset({name}), via="mtls")
        if names:
            raise _refused(
                f"the client certificate ({', '.join(names)}) is not a known identity "
                "and no bearer token was sent",
                "UNKNOWN_IDENTITY",
            )
        raise _refused(
            "credentials required: send `authorization: Bearer <token>` "
            "(mint one with `agent-relay token`) or a known client certificate",
            "CREDENTIALS_MISSING",
        )


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The token of the `authorization: Bearer ...` entry; "" for a malformed one."""
    for key, value in metadata:
        if key.lower() != "authorization":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _refused("the authorization metadata must be `Bearer <token>`", "TOKEN_MALFORMED")
        return token.strip()
    return None


def certificate_names(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The verified client certificate's common name, then its subject alternative names."""
    names: list[str] = []
    for prop in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth_context.get(prop, ()):
            name = value.decode("utf-8", "replace")
            if name not in names:
                names.append(name)
    return names


def is_loopback(host: str) -> bool:
    """Whether a listen host only accepts connections from this machine."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_refusal(listen: str, *, credentials: bool, insecure_allowed: bool) -> str | None:
    """Why the service must not start on `listen` (host:port), or None when it may.

    Without credentials configured anyone who reaches the port may do anything, so
    that is allowed on loopback only, unless the operator says insecure explicitly."""
    host = listen.rsplit(":", 1)[0]
    if credentials or insecure_allowed or is_loopback(host):
        return None
    return (
        f"refusing to listen on {listen} without credentials: set --auth-jwt-secret, "
        "--auth-jwt-public-key-file or --mtls-identities, listen on 127.0.0.1, "
        "or pass --insecure-allow-unauthenticated"
    )


def _refused(message: str, reason: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason)
