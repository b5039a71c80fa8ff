"""Credentials to callers, and what callers may do: pure, no sockets, a fixed clock."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agent_service import access
from agent_service.auth import (
    AUDIENCE,
    OPEN_CALLER,
    Authenticator,
    Caller,
    TokenVerifier,
    listen_refusal,
    mint_token,
    parse_identities,
)
from agent_service.config import load
from agent_service.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated

SECRET = "grpc-auth-unit-secret-0123456789abcdef"
NOW = 1_800_000_000.0


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def mint(sub: str = "backend-1", scopes: str = "read chat", ttl_s: int = 60, **kw: object) -> str:
    return mint_token(SECRET, subject=sub, scopes=scopes, ttl_s=ttl_s, now=NOW, **kw)  # type: ignore[arg-type]


def refusal(authenticator: Authenticator, metadata: list, auth_context: dict | None = None) -> str:
    with pytest.raises(Unauthenticated) as caught:
        authenticator.authenticate(metadata, auth_context or {}, NOW)
    return caught.value.reason


JWT = Authenticator(TokenVerifier(SECRET))


def test_a_minted_token_names_its_subject_scopes_and_user() -> None:
    caller = JWT.authenticate(bearer(mint()), {}, NOW)
    assert caller == Caller("backend-1", frozenset({"read", "chat"}), frozenset({"backend-1"}))
    assert caller.may_act_for("backend-1") and not caller.may_act_for("alice")


def test_the_users_claim_replaces_the_subject_as_the_users_it_acts_for() -> None:
    caller = JWT.authenticate(bearer(mint(users=["alice", "bob"])), {}, NOW)
    assert caller.users == {"alice", "bob"} and not caller.may_act_for("backend-1")


def test_missing_bad_and_expired_credentials_are_refused_with_a_reason() -> None:
    assert refusal(JWT, []) == "CREDENTIALS_MISSING"
    assert refusal(JWT, [("authorization", "Basic dXNlcjpwdw==")]) == "TOKEN_MALFORMED"
    assert refusal(JWT, bearer("not-a-jwt")) == "TOKEN_MALFORMED"
    forged = mint_token(
        "another-secret-of-at-least-32-bytes!!", subject="x", scopes="admin", ttl_s=60, now=NOW
    )
    assert refusal(JWT, bearer(forged)) == "TOKEN_SIGNATURE"
    expired = mint_token(SECRET, subject="x", scopes="read", ttl_s=60, now=NOW - 120)
    assert refusal(JWT, bearer(expired)) == "TOKEN_EXPIRED"


def test_alg_none_and_tokens_for_another_audience_are_refused() -> None:
    unsigned = jwt.encode(
        {"sub": "x", "scope": "admin", "aud": AUDIENCE, "exp": NOW + 60}, None, algorithm="none"
    )
    assert refusal(JWT, bearer(unsigned)) == "TOKEN_ALGORITHM"
    # what the edge issues to browsers: same kind of secret, no aud, no scope
    browser = jwt.encode(
        {"sub": "u_1", "sessions": ["s_1"], "exp": NOW + 60}, SECRET, algorithm="HS256"
    )
    assert refusal(JWT, bearer(browser)) == "TOKEN_INVALID"
    other = jwt.encode({"sub": "x", "aud": "elsewhere", "exp": NOW + 60}, SECRET, algorithm="HS256")
    assert refusal(JWT, bearer(other)) == "TOKEN_AUDIENCE"


def test_unknown_scopes_grant_nothing_and_cannot_be_minted() -> None:
    token = jwt.encode(
        {"sub": "x", "scope": "read superuser", "aud": AUDIENCE, "exp": NOW + 60}, SECRET, "HS256"
    )
    assert JWT.authenticate(bearer(token), {}, NOW).scopes == {"read"}
    with pytest.raises(ValueError, match="unknown scope 'superuser'"):
        mint(scopes="read superuser")


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_public_key_tokens_are_checked_with_the_public_key(algorithm: str) -> None:
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    authenticator = Authenticator(TokenVerifier(public_key_pem=pem))
    token = mint_token(
        private, subject="svc", scopes="read", ttl_s=60, now=NOW, algorithm=algorithm
    )
    assert authenticator.authenticate(bearer(token), {}, NOW).subject == "svc"
    # HS256 with the public key's bytes as the secret: the classic key-confusion forgery
    assert refusal(authenticator, bearer(mint())) == "TOKEN_ALGORITHM"


def test_a_known_client_certificate_is_a_caller_and_an_unknown_one_is_refused() -> None:
    mtls = Authenticator(identities=parse_identities(["edge=read chat admin", "alice=read"]))
    edge = mtls.authenticate([], {"x509_common_name": [b"edge"]}, NOW)
    assert edge.admin and edge.via == "mtls"
    by_san = mtls.authenticate(
        [], {"x509_common_name": [b"x"], "x509_subject_alternative_name": [b"alice"]}, NOW
    )
    assert by_san.subject == "alice" and by_san.scopes == {"read"}
    assert refusal(mtls, [], {"x509_common_name": [b"stranger"]}) == "UNKNOWN_IDENTITY"
    assert refusal(mtls, bearer(mint())) == "TOKEN_NOT_ACCEPTED"


def test_malformed_identities_are_refused() -> None:
    with pytest.raises(ValueError):
        parse_identities(["edge"])
    with pytest.raises(ValueError):
        parse_identities(["edge=read root"])


def test_nothing_configured_means_everyone_may_do_everything() -> None:
    assert Authenticator().authenticate([], {}, NOW) is OPEN_CALLER
    assert OPEN_CALLER.admin and OPEN_CALLER.has("tools")


@pytest.mark.parametrize(
    ("listen", "credentials", "insecure", "refused"),
    [
        ("127.0.0.1:50051", False, False, False),
        ("[::1]:50051", False, False, False),
        ("localhost:0", False, False, False),
        ("127.1.2.3:0", False, False, False),
        ("0.0.0.0:50051", False, False, True),
        ("[::]:50051", False, False, True),
        (":50051", False, False, True),
        ("10.0.0.5:50051", False, False, True),
        ("0.0.0.0:50051", True, False, False),
        ("0.0.0.0:50051", False, True, False),
    ],
)
def test_an_unauthenticated_listener_is_for_loopback_only(
    listen: str, credentials: bool, insecure: bool, refused: bool
) -> None:
    reason = listen_refusal(listen, credentials=credentials, insecure_allowed=insecure)
    assert (reason is not None) == refused
    if reason:
        assert "\n" not in reason and "--insecure-allow-unauthenticated" in reason


def test_the_insecure_flag_alone_means_true_and_settings_validate_credentials() -> None:
    assert load(["--insecure-allow-unauthenticated"], {}).insecure_allow_unauthenticated
    assert not load([], {}).credentials_configured
    assert load(["--auth-jwt-secret", SECRET], {}).credentials_configured
    with pytest.raises(SystemExit):
        load(["--auth-jwt-secret", "short"], {})
    with pytest.raises(SystemExit):  # identities need client certificates
        load(["--mtls-identities", "edge=admin"], {})


# ---- access: what a caller may do ---------------------------------------------------------------

ALICE = Caller("alice", frozenset({"read", "chat"}), frozenset({"alice"}))
ADMIN = Caller("edge", frozenset({"read", "chat", "admin"}))


def test_rpcs_need_their_scope_and_say_which() -> None:
    access.check_method(ALICE, access.SERVICE + "ListSessions")
    with pytest.raises(PermissionDenied) as caught:
        access.check_method(ALICE, access.SERVICE + "ExecuteTool")
    assert caught.value.reason == "MISSING_SCOPE"
    assert caught.value.metadata["required_scope"] == "tools"
    assert "'tools' scope" in caught.value.message
    assert access.is_open("/grpc.health.v1.Health/Check")
    assert not access.is_open(access.SERVICE + "ListTools")


def test_a_request_for_no_user_means_the_callers_own_user() -> None:
    assert access.own_user(ALICE, "", "user_id") == "alice"
    assert access.own_user(ALICE, "alice", "user_id") == "alice"
    assert access.own_user(ADMIN, "", "user_id") == ""  # every user
    assert access.own_user(ADMIN, "bob", "user_id") == "bob"
    with pytest.raises(PermissionDenied):
        access.own_user(ALICE, "bob", "user_id")
    several = Caller("svc", frozenset({"read"}), frozenset({"alice", "bob"}))
    with pytest.raises(InvalidArgument):
        access.own_user(several, "", "user_id")


def test_another_users_session_looks_like_no_session_at_all() -> None:
    access.require_session_owner(ALICE, "alice", "s_1")
    access.require_session_owner(ADMIN, "bob", "s_1")
    with pytest.raises(NotFound) as caught:
        access.require_session_owner(ALICE, "bob", "s_1")
    assert caught.value.message == "no session 's_1'"  # the hub's words for a missing one
    assert caught.value.reason == "SESSION_NOT_FOUND"


def test_a_remembered_token_still_expires_on_time() -> None:
    verifier = TokenVerifier(SECRET)
    token = mint(ttl_s=60)
    assert verifier.verify(token, NOW).subject == "backend-1"
    assert verifier.verify(token, NOW + 30).subject == "backend-1"  # remembered: no re-check
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token, NOW + 120)
    assert caught.value.reason == "TOKEN_EXPIRED"
