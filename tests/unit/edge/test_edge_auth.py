"""Tokens: HS256 only; expired, forged and alg-none tokens refused with the reason."""

import jwt
import pytest

from ws_edge.auth import TokenAuthority, TokenError

SECRET = "unit-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def authority() -> TokenAuthority:
    return TokenAuthority(SECRET, ttl_s=60)


def test_an_issued_token_verifies_and_names_the_user_and_sessions(authority):
    token, expires_at = authority.issue("u_1", ["s_1", "s_2"], now=1000.0)
    claims = authority.verify(token, now=1001.0)
    assert claims.user_id == "u_1" and expires_at == 1060
    assert claims.may_join("s_2") and not claims.may_join("s_3")


def test_granted_hands_back_the_tokens_own_copy_of_a_named_session(authority):
    token, _ = authority.issue("u_1", ["s_1", "s_2"], now=1000.0)
    claims = authority.verify(token, now=1001.0)
    asked = "".join(["s_", "2"])  # equal to the claim's id, another object
    granted = claims.granted(asked)
    assert granted == "s_2" and granted is claims.sessions[1]
    assert claims.granted("s_3") is None


def refusal(authority, token, now=1001.0) -> str:
    with pytest.raises(TokenError) as info:
        authority.verify(token, now=now)
    return str(info.value)


def test_an_expired_token_is_refused(authority):
    token, _ = authority.issue("u_1", ["s_1"], now=1000.0)
    assert "expired" in refusal(authority, token, now=1060.0)


def test_a_token_signed_with_another_secret_is_refused(authority):
    forged = jwt.encode(
        {"sub": "u_1", "sessions": ["s_1"], "iat": 1000, "exp": 2000},
        "someone-elses-secret-xxxxxxxx-0123456789-abcdefghijk",
        algorithm="HS256",
    )
    assert "signature" in refusal(authority, forged)


def test_a_tampered_payload_is_refused(authority):
    token, _ = authority.issue("u_1", ["s_1"], now=1000.0)
    other, _ = authority.issue("u_2", ["s_9"], now=1000.0)
    header, _, signature = token.split(".")
    assert "signature" in refusal(authority, f"{header}.{other.split('.')[1]}.{signature}")


def test_alg_none_is_refused(authority):
    unsigned = jwt.encode(
        {"sub": "u_1", "sessions": ["s_1"], "iat": 1000, "exp": 2000}, None, algorithm="none"
    )
    assert "'none'" in refusal(authority, unsigned)


def test_another_hmac_algorithm_is_refused(authority):
    token = jwt.encode(
        {"sub": "u_1", "sessions": [], "iat": 1000, "exp": 2000}, SECRET * 2, algorithm="HS512"
    )
    assert "HS512" in refusal(authority, token)


@pytest.mark.parametrize("text", ["", "abc", "a.b.c", "x" * 40])
def test_garbage_is_refused(authority, text):
    assert refusal(authority, text)


def test_a_token_without_a_user_is_refused(authority):
    token = jwt.encode({"sessions": [], "iat": 1000, "exp": 2000}, SECRET, algorithm="HS256")
    assert "sub" in refusal(authority, token)


def test_a_short_secret_is_refused_at_start_up():
    with pytest.raises(ValueError):
        TokenAuthority("short", ttl_s=60)
