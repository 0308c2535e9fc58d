"""Supabase-shaped access tokens for the dev server's demo user, the tests and the benchmarks.

Production never mints tokens (Supabase Auth does); this signs what it would, with the project's
JWT secret (HS256), so the functions' verifier (shared.api.auth) accepts it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt


def supabase_claims(
    user_id: uuid.UUID | str, *, lifetime_seconds: int = 3600, **claims: Any
) -> dict:
    """An authenticated user's claims, as Supabase Auth issues them; `claims` override or add
    to them, and a claim given as None is left out."""
    now = int(time.time())
    values = {
        "sub": str(user_id),
        "aud": "authenticated",
        "role": "authenticated",
        "iat": now,
        "exp": now + lifetime_seconds,
        **claims,
    }
    return {name: value for name, value in values.items() if value is not None}


def mint_token(user_id: uuid.UUID | str, secret: str, **claims: Any) -> str:
    """An HS256 access token for user_id; `claims` (and lifetime_seconds) as supabase_claims."""
    return jwt.encode(supabase_claims(user_id, **claims), secret, "HS256")
