"""modelyard: deploy and serve machine-learning models online, without taking anything down."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "__version__"]

if TYPE_CHECKING:
    from modelyard.client import Client


def __getattr__(name: str) -> Any:
    if name == "Client":  # lazy: importing a submodule should not pull httpx in
        from modelyard.client import Client

        return Client
    raise AttributeError(f"module 'modelyard' has no attribute {name!r}")
