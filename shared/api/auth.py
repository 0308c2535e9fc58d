"""Verifies Supabase access tokens (`Authorization: Bearer <jwt>`) locally with PyJWT.

HS256 tokens are checked against SUPABASE_JWT_SECRET (legacy projects, local dev); ES256/RS256
tokens against the project's JWKS (asymmetric signing keys), fetched once and cached. The token's
`alg` only picks which of the two paths to take: an HS token is never checked against a public key,
an asymmetric token never against the secret, and `none` is never accepted.
"""

from __future__ import annotations

import logging
import uuid

import jwt

from shared.core.errors import unauthorized

logger = logging.getLogger("credit_jobs.auth")

AUDIENCE = "authenticated"
SYMMETRIC_ALGORITHMS = frozenset({"HS256"})
ASYMMETRIC_ALGORITHMS = frozenset({"ES256", "RS256"})
JWKS_CACHE_SECONDS = 300
JWKS_TIMEOUT_SECONDS = 5
LEEWAY_SECONDS = 10


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

    def user_id(self, authorization: str | None) -> uuid.UUID:
        """The caller's user id from an `Authorization` header value, or ApiError unauthorized."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("missing bearer token")
        claims = self.claims(token)
        try:
            return uuid.UUID(str(claims["sub"]))
        except ValueError:
            raise unauthorized("token subject is not a user id") from None

    def claims(self, token: str) -> dict:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError:
            raise unauthorized("malformed token") from None
        if not isinstance(algorithm, str):  # e.g. a list: unhashable, never an algorithm name
            raise unauthorized("malformed token")
        key, algorithm = self._key_for(token, algorithm)
        try:
            return jwt.decode(
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
