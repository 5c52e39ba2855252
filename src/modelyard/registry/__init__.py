"""The model registry: :class:`ModelRegistry` and its wire shapes."""

from modelyard.registry.schemas import Model, ModelCreate, ModelFilter, TagsChange
from modelyard.registry.service import ModelRegistry, model_from_row

__all__ = ["Model", "ModelCreate", "ModelFilter", "ModelRegistry", "TagsChange", "model_from_row"]
