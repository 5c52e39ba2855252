"""The control plane: :class:`ControlPlane` (core) and its FastAPI app.

The app is imported lazily (``modelyard.control.api``) so that core users do
not pay for FastAPI.
"""

from modelyard.control.plane import DEFAULT_ENGINE_NAMES, ControlPlane
from modelyard.control.schemas import (
    Endpoint,
    EndpointPatch,
    EndpointSpec,
    ModelQuery,
    ReplicaEndpointState,
    ReplicaReport,
    ReplicaStatus,
    Service,
    ServiceCreate,
    ServiceStatus,
    TokenCreate,
    TokenCreated,
    TokenInfo,
)

__all__ = [
    "DEFAULT_ENGINE_NAMES",
    "ControlPlane",
    "Endpoint",
    "EndpointPatch",
    "EndpointSpec",
    "ModelQuery",
    "ReplicaEndpointState",
    "ReplicaReport",
    "ReplicaStatus",
    "Service",
    "ServiceCreate",
    "ServiceStatus",
    "TokenCreate",
    "TokenCreated",
    "TokenInfo",
]
