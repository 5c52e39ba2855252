"""Bearer-token checks for the control plane API, as FastAPI dependencies.

Three levels: *admin* for every mutating call; *member* (any valid token,
``reader`` or ``admin``, always required) for what replicas do: status reports,
statistics pushes and artifact downloads (models are private even while the
other reads are open); *read* for the other GETs (open unless
``require_token_for_reads``). A missing token is 401, a token that is unknown
or too weak is 403, so a client can tell "log in" from "not allowed".

Replicas present a token of their own: ``modelyard serve`` uses the admin token
it created, a standalone ``modelyard inference`` or ``queue-worker`` the one in
``MODELYARD_TOKEN``/``--token`` (a ``reader`` token is enough).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from modelyard.control.plane import ControlPlane
from modelyard.control.schemas import Role
from modelyard.errors import Forbidden, Unauthorized


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Auth:
    """The three dependencies, bound to one control plane and one read policy."""

    def __init__(self, plane: ControlPlane, *, require_token_for_reads: bool) -> None:
        self.plane = plane
        self.require_token_for_reads = require_token_for_reads

    async def _role(self, request: Request) -> Role:
        token = bearer_token(request)
        if token is None:
            raise Unauthorized("this call needs a bearer token (Authorization: Bearer <token>)")
        role = await run_in_threadpool(self.plane.verify_token, token)
        if role is None:
            raise Forbidden("the bearer token is not valid")
        return role

    def admin(self) -> Callable[[Request], object]:
        async def require_admin(request: Request) -> None:
            if await self._role(request) != "admin":
                raise Forbidden("this call needs an admin token; the given token is read-only")

        return require_admin

    def member(self) -> Callable[[Request], object]:
        """Any valid token, whatever the read policy (replica reports, artifact downloads)."""

        async def require_member(request: Request) -> None:
            await self._role(request)

        return require_member

    def read(self) -> Callable[[Request], object]:
        async def require_read(request: Request) -> None:
            if self.require_token_for_reads:
                await self._role(request)

        return require_read
