"""Write bytecode for what modelyard's roles and engines import, and nothing else (image builds).

The image's user cannot write to the virtualenv, so a module without a .pyc there compiles on
every start. Compiling every installed module costs ~120 MB, most of it modules nothing here
imports (scipy's and sklearn's many corners); importing what a role or an engine imports writes
exactly the bytecode that matters. Run with the image's Python, bytecode writing on.
"""

from __future__ import annotations

import compileall
import importlib
import pkgutil
import sys
from pathlib import Path

# what the engines load when a model of theirs arrives (modelyard's own modules import them lazily)
LIBRARIES = [
    "sklearn.linear_model",
    "sklearn.ensemble",
    "sklearn.tree",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    "xgboost",
    "lightgbm",
    "onnxruntime",
    "s3fs",
    "psycopg",
    "redis.asyncio",
    "torch",
]


def main() -> int:
    import modelyard

    compileall.compile_dir(Path(modelyard.__file__).parent, quiet=1)
    skipped = []
    for info in pkgutil.walk_packages(modelyard.__path__, "modelyard."):
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # an optional path whose library is absent: no bytecode needed
            skipped.append(f"{info.name} ({type(exc).__name__}: {exc})")
    for line in skipped:
        print(f"bytecode: not imported: {line}", file=sys.stderr)
    for name in LIBRARIES:
        if importlib.util.find_spec(name.split(".")[0]) is not None:  # else an extra not installed
            importlib.import_module(name)  # one that fails to load fails the build (stripped .so)
    return 0


if __name__ == "__main__":
    sys.exit(main())
