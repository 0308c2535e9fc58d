"""Verifies Supabase access tokens (`Authorization: Bearer <jwt>`) locally with PyJWT.

HS256 tokens are checked against SUPABASE_JWT_SECRET (legacy projects, local dev); ES256/RS256
tokens against the project's JWKS (asymmetric signing keys), fetched once and cached. The token's
`alg` only picks which of the two paths to take: an HS token is never checked against a public key,
an asymmetric token never against the secret, and `none` is never accepted.

A verified token is remembered (an LRU of TOKEN_CACHE_SIZE, keyed by the token's exact text) for
at most TOKEN_CACHE_SECONDS and never past its `exp`, so a client sending the same token again is
not verified again. Only tokens that passed every check are remembered; algorithm, audience,
issuer and signature are properties of the token's text and this verifier's settings, `exp` is
honoured by the entry's end, and a token is served from the cache only while its key lookup (the
secret, or the JWKS for ES256/RS256) still gives the very key it was verified with.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt

from shared.core.errors import unauthorized

logger = logging.getLogger("credit_jobs.auth")

AUDIENCE = "authenticated"
SYMMETRIC_ALGORITHMS = frozenset({"HS256"})
ASYMMETRIC_ALGORITHMS = frozenset({"ES256", "RS256"})
JWKS_CACHE_SECONDS = 300
JWKS_TIMEOUT_SECONDS = 5
LEEWAY_SECONDS = 10
# Verified tokens remembered per verifier (one per process): a few minutes of an instance's users.
TOKEN_CACHE_SIZE = 1024
TOKEN_CACHE_SECONDS = 300


@dataclass(frozen=True)
class _Verified:
    claims: dict[str, Any]  # never handed out: callers get a copy
    subject: uuid.UUID | None  # `sub` as a user id; None when it is not one
    until: float  # epoch seconds: min(exp, verified + TOKEN_CACHE_SECONDS)
    algorithm: str
    key: object  # the secret, or the JWKS key object the signature was checked with


class TokenVerifier:
    def __init__(
        self,
        *,
        jwt_secret: str | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self.jwt_secret = jwt_secret
        self.issuer = issuer
        self.jwks = (
            jwt.PyJWKClient(
                jwks_url,
                cache_keys=True,
                lifespan=JWKS_CACHE_SECONDS,
                timeout=JWKS_TIMEOUT_SECONDS,
            )
            if jwks_url
            else None
        )
        self._verified: OrderedDict[str, _Verified] = OrderedDict()
        self._verified_lock = threading.Lock()

    def user_id(self, authorization: str | None) -> uuid.UUID:
        """The caller's user id from an `Authorization` header value, or ApiError unauthorized."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("missing bearer token")
        subject = self._checked(token).subject
        if subject is None:
            raise unauthorized("token subject is not a user id")
        return subject

    def claims(self, token: str) -> dict:
        """The token's claims once it passed every check, or ApiError unauthorized."""
        return dict(self._checked(token).claims)

    def _checked(self, token: str) -> _Verified:
        now = time.time()
        known = self._remembered(token, now)
        if known is not None:
            return known
        claims, algorithm, key = self._verify(token)
        # PyJWT's own reading of `exp`; the leeway is not extended to cached entries
        until = min(int(claims["exp"]), now + TOKEN_CACHE_SECONDS)
        verified = _Verified(claims, _subject(claims), until, algorithm, key)
        if until > now:
            self._remember(token, verified)
        return verified

    def _remembered(self, token: str, now: float) -> _Verified | None:
        with self._verified_lock:
            known = self._verified.get(token)
            if known is None:
                return None
            if now >= known.until:
                del self._verified[token]
                return None
            self._verified.move_to_end(token)
        # The key the full check would take now (refused the same way if it is gone, e.g. from
        # the JWKS); any other object than the one that verified the signature: verify again.
        key, _ = self._key_for(token, known.algorithm)
        return known if key is known.key else None

    def _remember(self, token: str, verified: _Verified) -> None:
        with self._verified_lock:
            self._verified[token] = verified
            self._verified.move_to_end(token)
            while len(self._verified) > TOKEN_CACHE_SIZE:
                self._verified.popitem(last=False)

    def _verify(self, token: str) -> tuple[dict, str, object]:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError:
            raise unauthorized("malformed token") from None
        if not isinstance(algorithm, str):  # e.g. a list: unhashable, never an algorithm name
            raise unauthorized("malformed token")
        key, algorithm = self._key_for(token, algorithm)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=AUDIENCE,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "sub", "aud"], "verify_iss": bool(self.issuer)},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("token expired") from None
        except jwt.InvalidAudienceError:
            raise unauthorized("token audience is not 'authenticated'") from None
        except jwt.InvalidIssuerError:
            raise unauthorized("token issuer is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise unauthorized(f"token has no '{exc.claim}' claim") from None
        except jwt.PyJWTError:
            raise unauthorized("invalid token") from None
        return claims, algorithm, key

    def _key_for(self, token: str, algorithm: object) -> tuple[object, str]:
        if algorithm in SYMMETRIC_ALGORITHMS:
            if not self.jwt_secret:
                raise unauthorized("HS256 tokens are not accepted here")
            return self.jwt_secret, algorithm
        if algorithm in ASYMMETRIC_ALGORITHMS:
            if self.jwks is None:
                raise unauthorized(f"{algorithm} tokens are not accepted here")
            try:
                key = self.jwks.get_signing_key_from_jwt(token)
            except jwt.PyJWKClientConnectionError:
                logger.error("could not fetch the JWKS to verify a token")
                raise unauthorized("signing keys are unavailable, retry shortly") from None
            except jwt.PyJWTError:
                raise unauthorized("token signing key is unknown") from None
            # The key decides the algorithm: a key of another type cannot verify this token.
            if key.algorithm_name != algorithm:
                raise unauthorized("token algorithm does not match its signing key")
            return key, algorithm
        raise unauthorized("token algorithm is not accepted")


def _subject(claims: dict[str, Any]) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(claims["sub"]))
    except ValueError:
        return None
