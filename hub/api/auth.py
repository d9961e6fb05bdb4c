"""Bearer-token auth for the admin API."""

from __future__ import annotations

from fastapi import HTTPException, Request, status

from connectors.base import matches_digest, secret_digest


class AdminAuth:
    """FastAPI dependency: only the token's digest is kept, compared in constant time."""

    def __init__(self, token: str) -> None:
        self._digest = secret_digest(token)

    def __call__(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token or not matches_digest(token, self._digest):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="admin API: send 'Authorization: Bearer <HUB_ADMIN_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
