"""``scripts/docs.py`` (the docs' generator and mkdocs hook) as a module the tests can import."""

from __future__ import annotations

import importlib.util
from functools import cache
from types import ModuleType

from tests.docs.docblocks import ROOT


@cache
def docs_gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("modelyard_docs_gen", ROOT / "scripts" / "docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
