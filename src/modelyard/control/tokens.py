"""API tokens: random secrets shown once, kept only as their sha256.

A leaked database then leaks no usable credential. The admin token of a fresh
installation is written to ``<home>/token`` (mode 0600) so the CLI on the same
machine works with no setup; the file is created with ``O_EXCL`` so that
several workers starting together agree on one token.

Three roles, each allowed what the one below it may do and more:

* ``reader`` reads (configurations with their options, artifact downloads);
* ``replica`` also reports: replica status reports and statistics pushes, which change what
  ``status``, the endpoint list and the dashboard show, so a reader cannot forge them;
* ``admin`` changes anything.

A deployment whose replicas cannot read that file (Kubernetes) gives the control plane a
second secret instead, ``Settings.replica_token``: registered at start as the ``replica``
token ``replicas``, which replicas and queue workers present as their ``MODELYARD_TOKEN``.
A leaked replica secret can forge reports but cannot change any configuration.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import cast

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from modelyard.control.schemas import Role, TokenCreated, TokenInfo
from modelyard.errors import BadRequest, Conflict, NotFound
from modelyard.store import Database, TokenRow, utcnow

ADMIN_TOKEN_NAME = "admin"
REPLICA_TOKEN_NAME = "replicas"
ROLES: tuple[Role, ...] = ("reader", "replica", "admin")
"""Weakest first: a role may do what every role before it may."""


def role_at_least(role: str | None, needed: Role) -> bool:
    """Whether ``role`` may do what ``needed`` may (``None``, no token, may nothing)."""
    return role in ROLES and ROLES.index(cast(Role, role)) >= ROLES.index(needed)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise BadRequest(f"token role {role!r} is not one of: {', '.join(ROLES)}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "my_" + secrets.token_urlsafe(32)


class TokenStore:
    """Create, check, list and revoke tokens in ``db``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, role: Role = "reader", token: str | None = None) -> TokenCreated:
        """A new token named ``name``; :class:`Conflict` if the name is taken."""
        _check_role(role)
        token = token or new_token()
        try:
            with self.db.write() as session:
                if session.scalar(select(TokenRow.id).where(TokenRow.name == name)) is not None:
                    raise Conflict(f"token {name!r} already exists")
                session.add(TokenRow(name=name, sha256=hash_token(token), role=role, created_at=utcnow()))
        except IntegrityError:
            raise Conflict(f"token {name!r} already exists (or the same secret is registered)") from None
        return TokenCreated(name=name, role=role, token=token)

    def verify(self, token: str) -> Role | None:
        """The role of ``token``, or ``None`` when it is unknown."""
        if not token:
            return None
        with self.db.read() as session:
            role = session.scalar(select(TokenRow.role).where(TokenRow.sha256 == hash_token(token)))
        return cast(Role, role) if role in ROLES else None

    def list(self) -> list[TokenInfo]:
        with self.db.read() as session:
            rows = session.scalars(select(TokenRow).order_by(TokenRow.name)).all()
            return [TokenInfo(name=r.name, role=cast(Role, r.role), created_at=r.created_at) for r in rows]

    def revoke(self, name: str) -> None:
        with self.db.write() as session:
            row = session.scalar(select(TokenRow).where(TokenRow.name == name))
            if row is None:
                raise NotFound(f"token {name!r} not found")
            session.delete(row)

    def register_admin(self, token: str) -> None:
        """Make sure ``token`` is an admin token (idempotent; picks a free name)."""
        self.register(token, "admin", ADMIN_TOKEN_NAME)

    def register(self, token: str, role: Role, name: str, *, replace: bool = False) -> Role:
        """Make sure ``token`` is a known token of at least ``role``; returns the role it has.

        Idempotent, and safe when several processes start at once. A secret already
        registered keeps its row: raised to ``role`` when that is stronger, never lowered
        (lowering would lock out whoever uses it as an admin token; raising turns the
        ``reader`` replica token of an older release into a ``replica`` one). A new secret gets the row
        ``name``: with ``replace`` an existing row of that name takes the new secret and role
        (the old secret stops working: a setting that names *the* token, such as
        ``replica_token``, was changed); without it the first free ``name-2``, ``name-3``...
        """
        _check_role(role)
        if not token:
            raise BadRequest("an empty token cannot be registered")
        digest = hash_token(token)
        for attempt in range(20):
            try:
                with self.db.write() as session:
                    row = session.scalar(select(TokenRow).where(TokenRow.sha256 == digest))
                    if row is not None:
                        if not role_at_least(row.role, role):
                            row.role = role
                        return cast(Role, row.role)
                    named = session.scalar(select(TokenRow).where(TokenRow.name == name))
                    if named is not None and replace:
                        named.sha256, named.role, named.created_at = digest, role, utcnow()
                        return role
                    taken = set(session.scalars(select(TokenRow.name)))
                    free, n = name, 1
                    while free in taken:
                        n += 1
                        free = f"{name}-{n}"
                    session.add(TokenRow(name=free, sha256=digest, role=role, created_at=utcnow()))
                    return role
            except IntegrityError:
                time.sleep(0.01 * (attempt + 1))  # another process registered at the same time
        raise Conflict(f"could not register the {role} token {name!r}")

    def ensure_admin_token(self, token_file: Path) -> str:
        """The admin token in ``token_file``, created (mode 0600) on first start; always registered."""
        token_file = Path(token_file)
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token = new_token()
        try:
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            token = _read_token_file(token_file)
        else:
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            os.chmod(token_file, 0o600)  # exactly 0600, whatever the umask
        self.register_admin(token)
        return token


def _read_token_file(path: Path) -> str:
    """The token in ``path``; waits briefly when another process is still writing it."""
    for _ in range(100):
        token = path.read_text().strip()
        if token:
            return token
        time.sleep(0.02)
    raise BadRequest(f"token file {path} is empty; delete it to get a new admin token")
