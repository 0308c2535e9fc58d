"""Access-token verification: HS256 secret, JWKS (ES256/RS256), and the attacks on both."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.api import auth
from shared.api.auth import TokenVerifier
from shared.core.errors import ApiError
from shared.dev.tokens import supabase_claims
from tests.fake_http import closed_port_url, fake_server

SECRET = "unit-test-jwt-secret-with-at-least-32-bytes"
USER = uuid.uuid4()
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())


def claims(**overrides):
    return supabase_claims(USER, lifetime_seconds=600, **overrides)


def hs_token(secret=SECRET, **overrides) -> str:
    return jwt.encode(claims(**overrides), secret, "HS256")


def jwk(public_key, kid: str) -> dict:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        data = jwt.algorithms.ECAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        data = jwt.algorithms.RSAAlgorithm.to_jwk(public_key, as_dict=True)
    return {**data, "kid": kid, "use": "sig"}


@pytest.fixture(scope="module")
def jwks_url():
    keys = {"keys": [jwk(EC_KEY.public_key(), "ec-1"), jwk(RSA_KEY.public_key(), "rsa-1")]}
    with fake_server(lambda request: (200, keys)) as server:
        yield server.url + "/auth/v1/.well-known/jwks.json"


def verify(token: str | None, **verifier_args) -> uuid.UUID:
    verifier_args.setdefault("jwt_secret", SECRET)
    header = None if token is None else f"Bearer {token}"
    return TokenVerifier(**verifier_args).user_id(header)


def refused(token: str | None, **verifier_args) -> str:
    with pytest.raises(ApiError) as caught:
        verify(token, **verifier_args)
    assert caught.value.status == 401 and caught.value.code == "unauthorized"
    return caught.value.message


def test_hs256_token_gives_the_user_id():
    assert verify(hs_token()) == USER


def test_missing_or_malformed_authorization_is_refused():
    assert "missing" in refused(None)
    assert "missing" in refused("")
    with pytest.raises(ApiError):
        TokenVerifier(jwt_secret=SECRET).user_id(f"Basic {hs_token()}")
    assert refused("abc.def") == "malformed token"


def test_expired_token_is_refused():
    assert refused(hs_token(exp=int(time.time()) - 60)) == "token expired"


def test_wrong_audience_is_refused():
    assert "audience" in refused(hs_token(aud="anon"))
    assert "aud" in refused(hs_token(aud=None))


def test_missing_exp_or_sub_is_refused():
    assert "exp" in refused(hs_token(exp=None))
    assert "sub" in refused(hs_token(sub=None))


def test_sub_must_be_a_uuid():
    assert "subject" in refused(hs_token(sub="service_role"))


def test_wrong_secret_is_refused():
    assert refused(hs_token(secret="another-secret-also-at-least-32-bytes!!")) == "invalid token"


def test_alg_none_is_refused():
    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}."
    assert "algorithm" in refused(unsigned)


@pytest.mark.parametrize("alg", [["HS256"], {"HS256": True}, 256, None])
def test_an_alg_that_is_not_a_string_is_malformed(alg):
    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    assert refused(f"{b64({'alg': alg})}.{b64(claims())}.c2ln") == "malformed token"


def test_other_hmac_algorithms_are_refused():
    assert "algorithm" in refused(jwt.encode(claims(), SECRET * 2, "HS512"), jwt_secret=SECRET * 2)


def test_issuer_is_checked_when_configured():
    issuer = "https://project.supabase.co/auth/v1"
    assert verify(hs_token(iss=issuer), issuer=issuer) == USER
    assert "issuer" in refused(hs_token(iss="https://evil.example/auth/v1"), issuer=issuer)
    assert "iss" in refused(hs_token(), issuer=issuer)


def test_es256_and_rs256_tokens_are_verified_with_the_jwks(jwks_url):
    es = jwt.encode(claims(), EC_KEY, "ES256", headers={"kid": "ec-1"})
    rs = jwt.encode(claims(), RSA_KEY, "RS256", headers={"kid": "rsa-1"})
    assert verify(es, jwt_secret=None, jwks_url=jwks_url) == USER
    assert verify(rs, jwt_secret=None, jwks_url=jwks_url) == USER


def test_asymmetric_token_signed_by_another_key_is_refused(jwks_url):
    forged = jwt.encode(claims(), OTHER_EC_KEY, "ES256", headers={"kid": "ec-1"})
    assert refused(forged, jwks_url=jwks_url) == "invalid token"
    unknown = jwt.encode(claims(), OTHER_EC_KEY, "ES256", headers={"kid": "nope"})
    assert "unknown" in refused(unknown, jwks_url=jwks_url)


def test_asymmetric_tokens_need_a_jwks():
    es = jwt.encode(claims(), EC_KEY, "ES256", headers={"kid": "ec-1"})
    assert "not accepted" in refused(es)


def test_hs256_signed_with_the_public_key_is_refused(jwks_url):
    # The classic confusion attack: the public key (which anyone can fetch) as an HMAC secret.
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = (
        f"{b64(json.dumps({'alg': 'HS256', 'kid': 'rsa-1'}).encode())}."
        f"{b64(json.dumps(claims()).encode())}"
    )
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64(signature)}"
    assert refused(forged, jwks_url=jwks_url) == "invalid token"
    assert "not accepted" in refused(forged, jwt_secret=None, jwks_url=jwks_url)


def test_token_algorithm_must_match_its_key(jwks_url):
    # An RS256 header pointing at the EC key: the key decides, the token is refused.
    mismatched = jwt.encode(claims(), RSA_KEY, "RS256", headers={"kid": "ec-1"})
    assert "does not match" in refused(mismatched, jwks_url=jwks_url)


def test_unreachable_jwks_is_refused_cleanly():
    es = jwt.encode(claims(), EC_KEY, "ES256", headers={"kid": "ec-1"})
    assert "unavailable" in refused(es, jwks_url=closed_port_url())


# The verified-token cache: a token's text verified once is trusted until min(exp, 5 min).


class Clock:
    """The time both the cache and PyJWT's claim checks see."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()

    class FrozenDatetime(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime.fromtimestamp(clock.now, tz)

    monkeypatch.setattr(auth, "time", clock)
    monkeypatch.setattr(jwt.api_jwt, "datetime", FrozenDatetime)
    return clock


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Every token that went through full verification (jwt.decode), in order."""
    seen: list[str] = []
    decode = jwt.decode

    def counting(token, *args, **kwargs):
        seen.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return seen


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_a_cached_token_is_refused_once_it_expires(clock, decodes):
    verifier = TokenVerifier(jwt_secret=SECRET)
    token = hs_token(exp=int(clock.now) + 60)
    assert verifier.user_id(bearer(token)) == USER
    clock.now += 59
    assert verifier.user_id(bearer(token)) == USER
    assert len(decodes) == 1  # the second came from the cache
    clock.now += 1  # at exp the entry ends: verified again, and the leeway still applies
    assert verifier.user_id(bearer(token)) == USER
    clock.now += auth.LEEWAY_SECONDS + 1
    with pytest.raises(ApiError) as caught:
        verifier.user_id(bearer(token))
    assert caught.value.message == "token expired"
    assert len(decodes) == 3


def test_a_token_is_verified_again_when_its_entry_ends(clock, decodes):
    verifier = TokenVerifier(jwt_secret=SECRET)
    token = hs_token(exp=int(clock.now) + 3600)
    assert verifier.user_id(bearer(token)) == USER
    clock.now += auth.TOKEN_CACHE_SECONDS - 1
    assert verifier.user_id(bearer(token)) == USER
    assert len(decodes) == 1
    clock.now += 1
    assert verifier.user_id(bearer(token)) == USER
    assert decodes == [token, token]


def test_another_token_text_is_never_served_from_the_cache(clock, decodes):
    verifier = TokenVerifier(jwt_secret=SECRET)
    token = hs_token()
    assert verifier.user_id(bearer(token)) == USER
    head, payload, signature = token.split(".")
    tampered = f"{head}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    with pytest.raises(ApiError) as caught:
        verifier.user_id(bearer(tampered))
    assert caught.value.message == "invalid token"
    with pytest.raises(ApiError):  # the same claims signed with another secret
        verifier.user_id(bearer(hs_token(secret="another-secret-with-at-least-32-bytes!")))
    other = uuid.uuid4()
    assert verifier.user_id(bearer(jwt.encode({**claims(), "sub": str(other)}, SECRET))) == other
    assert len(decodes) == 4
    with pytest.raises(ApiError):  # another verifier (other settings) has a cache of its own
        TokenVerifier(jwt_secret="not-the-secret-anymore-32-bytes-long").user_id(bearer(token))


def test_the_cache_is_bounded_and_forgets_the_least_recently_used(clock, decodes, monkeypatch):
    monkeypatch.setattr(auth, "TOKEN_CACHE_SIZE", 3)
    verifier = TokenVerifier(jwt_secret=SECRET)
    tokens = [hs_token(session_id=str(n)) for n in range(4)]
    for token in tokens[:3]:
        verifier.user_id(bearer(token))
    verifier.user_id(bearer(tokens[0]))  # now the most recently used
    verifier.user_id(bearer(tokens[3]))  # evicts tokens[1]
    assert len(decodes) == 4
    verifier.user_id(bearer(tokens[0]))
    verifier.user_id(bearer(tokens[3]))
    assert len(decodes) == 4
    verifier.user_id(bearer(tokens[1]))
    assert decodes[-1] == tokens[1] and len(decodes) == 5
    assert len(verifier._verified) == 3


def test_a_cached_asymmetric_token_still_needs_its_key_from_the_jwks(clock, decodes, jwks_url):
    verifier = TokenVerifier(jwks_url=jwks_url)
    es = jwt.encode(claims(), EC_KEY, "ES256", headers={"kid": "ec-1"})
    assert verifier.user_id(bearer(es)) == USER
    assert verifier.user_id(bearer(es)) == USER
    assert len(decodes) == 1
    # the JWKS fetched anew: the same key, but not the object that verified it: verified again
    verifier.jwks = jwt.PyJWKClient(jwks_url)
    assert verifier.user_id(bearer(es)) == USER
    assert len(decodes) == 2
    # a JWKS without the key: refused as an uncached token would be
    with fake_server(lambda request: (200, {"keys": [jwk(RSA_KEY.public_key(), "rsa-1")]})) as s:
        verifier.jwks = jwt.PyJWKClient(s.url + "/jwks.json")
        with pytest.raises(ApiError) as caught:
            verifier.user_id(bearer(es))
    assert "unknown" in caught.value.message


def test_a_token_refused_is_not_remembered(clock, decodes):
    verifier = TokenVerifier(jwt_secret=SECRET)
    token = hs_token(aud="anon")
    for _ in range(2):
        with pytest.raises(ApiError):
            verifier.user_id(bearer(token))
    assert len(decodes) == 2
    not_a_user = hs_token(sub="service")
    for _ in range(2):  # verified, remembered, and still refused by user_id every time
        with pytest.raises(ApiError) as caught:
            verifier.user_id(bearer(not_a_user))
        assert caught.value.message == "token subject is not a user id"
