"""Bearer-token checks for the control plane API, as FastAPI dependencies.

Four levels, each dependency marked with its level (:data:`AUTH_LEVEL_ATTR`) so that
:class:`modelyard.control.guard.GuardedRoute` checks the token *before* the body is read:

* *admin*: every call that changes configuration;
* *replica* (a ``replica`` or ``admin`` token): what replicas write, status reports and
  statistics pushes; they change what ``status`` and the dashboard show, so a ``reader``
  token cannot forge them;
* *token* (any valid token, always required): artifact downloads (models are private even
  while the other reads are open);
* *read*: the other GETs, open unless ``require_token_for_reads``. An anonymous caller sees
  endpoint ``options`` and ``auxiliary`` values redacted (:func:`modelyard.control.endpoints.redact`):
  they may hold credentials such as an ``api_key``.

A missing token is 401, a token that is unknown or too weak is 403, so a client can tell
"log in" from "not allowed". An unknown token on an open read is treated as no token.

Replicas present a token of their own: ``modelyard serve`` uses the admin token it created,
a standalone ``modelyard inference`` or ``queue-worker`` the one in ``MODELYARD_TOKEN``/
``--token`` (a ``replica`` token: ``modelyard token create NAME --role replica``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Literal

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from modelyard.control.plane import ControlPlane
from modelyard.control.schemas import Role
from modelyard.control.tokens import role_at_least
from modelyard.errors import Forbidden, Unauthorized

Level = Literal["read", "token", "replica", "admin"]
LEVELS: tuple[Level, ...] = ("read", "token", "replica", "admin")
"""Weakest first."""
AUTH_LEVEL_ATTR = "modelyard_auth_level"
"""Attribute of each dependency :class:`Auth` hands out: the level it demands."""
AUTH_ATTR = "modelyard_auth"
"""...and the :class:`Auth` it checks with (what :mod:`modelyard.control.guard` calls)."""
ROLE_KEY = "modelyard.role"
"""Scope key where the first check of a request keeps the caller's role (None: anonymous)."""
_NEEDED: dict[Level, Role] = {"read": "reader", "token": "reader", "replica": "replica", "admin": "admin"}


def bearer_token(headers: Mapping[str, str]) -> str | None:
    header = headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def auth_level(dependency: Any) -> Level | None:
    """The level a route dependency demands, if it is one of :class:`Auth`'s."""
    level = getattr(dependency, AUTH_LEVEL_ATTR, None)
    return level if level in _NEEDED else None


def auth_of(dependency: Any) -> Auth | None:
    """The :class:`Auth` that handed out ``dependency``, if any."""
    auth = getattr(dependency, AUTH_ATTR, None)
    return auth if isinstance(auth, Auth) else None


class Auth:
    """The dependencies, bound to one control plane and one read policy."""

    def __init__(self, plane: ControlPlane, *, require_token_for_reads: bool) -> None:
        self.plane = plane
        self.require_token_for_reads = require_token_for_reads

    def needs_token(self, level: Level) -> bool:
        return level != "read" or self.require_token_for_reads

    async def role(self, scope: MutableMapping[str, Any], headers: Mapping[str, str]) -> Role | None:
        """The caller's role (None: no token, or one that is not known), looked up once per request."""
        if ROLE_KEY in scope:
            cached: Role | None = scope[ROLE_KEY]
            return cached
        token = bearer_token(headers)
        role = None if token is None else await run_in_threadpool(self.plane.verify_token, token)
        scope[ROLE_KEY] = role
        return role

    async def check(
        self, scope: MutableMapping[str, Any], headers: Mapping[str, str], level: Level
    ) -> Role | None:
        """The caller's role if it may call a route of ``level``; raises 401/403 otherwise."""
        role = await self.role(scope, headers)
        if not self.needs_token(level):
            return role
        if bearer_token(headers) is None:
            raise Unauthorized("this call needs a bearer token (Authorization: Bearer <token>)")
        if role is None:
            raise Forbidden("the bearer token is not valid")
        needed = _NEEDED[level]
        if not role_at_least(role, needed):
            if needed == "admin":
                raise Forbidden(f"this call needs an admin token; the given token is a {role} token")
            raise Forbidden(f"this call needs a {needed} (or admin) token; the given token is a {role} token")
        return role

    def _dependency(self, level: Level) -> Callable[[Request], Any]:
        async def require(request: Request) -> Role | None:
            return await self.check(request.scope, request.headers, level)

        setattr(require, AUTH_LEVEL_ATTR, level)
        setattr(require, AUTH_ATTR, self)
        return require

    def admin(self) -> Callable[[Request], Any]:
        return self._dependency("admin")

    def replica(self) -> Callable[[Request], Any]:
        """A ``replica`` or ``admin`` token: status reports and statistics pushes."""
        return self._dependency("replica")

    def member(self) -> Callable[[Request], Any]:
        """Any valid token, whatever the read policy (artifact downloads)."""
        return self._dependency("token")

    def read(self) -> Callable[[Request], Any]:
        """Open unless ``require_token_for_reads``; as a parameter, the caller's role or None."""
        return self._dependency("read")
