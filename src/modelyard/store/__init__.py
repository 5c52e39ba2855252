"""Persistence of the control plane: tables, sessions, migrations.

Build a :class:`Database` from a URL, call :func:`upgrade` once on start, then
open sessions with ``db.read()`` / ``db.write()``.
"""

from modelyard.store.database import Database
from modelyard.store.migrate import upgrade
from modelyard.store.tables import (
    Base,
    BlobRow,
    EndpointRow,
    ModelRow,
    ReplicaRow,
    ServiceRow,
    TokenRow,
)
from modelyard.store.types import UTCDateTime, utcnow

__all__ = [
    "Base",
    "BlobRow",
    "Database",
    "EndpointRow",
    "ModelRow",
    "ReplicaRow",
    "ServiceRow",
    "TokenRow",
    "UTCDateTime",
    "upgrade",
    "utcnow",
]
