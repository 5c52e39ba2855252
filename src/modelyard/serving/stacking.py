"""Stacking requests into one engine call and splitting the answer back.

Used by the dynamic batcher and queue workers through ``LoadedEndpoint.run_many``: items
(arrays, or dicts of arrays, one per request) that agree on trailing shape and kind of dtype
are concatenated along the batch dimension; the output (array, dict or list of arrays) is cut
back by each item's row count. Anything that does not fit returns ``None`` so the caller
runs that item alone: stacking is an optimisation, never a change of answer.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _rows(value: Any) -> int | None:
    """Rows of one stackable item: an array with a batch dimension, or a dict of such with equal rows."""
    if isinstance(value, dict):
        counts = {_rows(v) for v in value.values()}
        return counts.pop() if len(counts) == 1 and value else None
    if isinstance(value, np.ndarray) and value.ndim >= 1 and value.dtype != object:
        return len(value)
    return None


def _kind(arr: np.ndarray) -> tuple[Any, ...]:
    """What must agree for arrays to stack: trailing shape, and dtype (ints and floats mix, as JSON does)."""
    return (arr.shape[1:], "number" if arr.dtype.kind in "if" else arr.dtype)


def _arrays(item: Any) -> Any:
    """JSON lists as arrays (ragged ones stay lists, and then do not stack)."""
    try:
        if isinstance(item, list | tuple):
            return np.asarray(item)
        if isinstance(item, dict):
            return {k: np.asarray(v) if isinstance(v, list | tuple) else v for k, v in item.items()}
    except (ValueError, TypeError):
        pass
    return item


def signature(item: Any) -> Any:
    """What must agree for items to stack (None: this one does not stack)."""
    item = _arrays(item)
    if _rows(item) is None:
        return None
    if isinstance(item, dict):
        return ("dict", tuple((k, _kind(v)) for k, v in item.items()))
    return ("array", _kind(item))


def stack(items: list[Any]) -> tuple[Any, list[int]] | None:
    """Items stacked along the batch dimension, and each one's row count; None if they do not stack.

    Arrays stack when their trailing shapes and dtypes agree; dicts per key when their keys do.
    Lists are made arrays first (JSON bodies).
    """
    items = [_arrays(i) for i in items]
    counted = [_rows(i) for i in items]
    rows = [r for r in counted if r is not None]
    if len(rows) != len(items):
        return None
    first = items[0]
    try:
        if isinstance(first, dict):
            keys = list(first)
            if any(not isinstance(i, dict) or list(i) != keys for i in items):
                return None
            if any(len({_kind(i[k]) for i in items}) != 1 for k in keys):
                return None
            return {k: np.concatenate([i[k] for i in items]) for k in keys}, rows
        if any(not isinstance(i, np.ndarray) for i in items):
            return None
        if len({_kind(i) for i in items}) != 1:
            return None
        return np.concatenate(items), rows
    except (ValueError, TypeError):
        return None


def split(out: Any, rows: list[int]) -> list[Any] | None:
    """A stacked output back into one output per item (array, dict or list/tuple of arrays)."""
    total = sum(rows)
    cuts = np.cumsum(rows)[:-1]
    if isinstance(out, dict):
        parts = {k: split(v, rows) for k, v in out.items()}
        if any(p is None for p in parts.values()):
            return None
        return [{k: p[j] for k, p in parts.items()} for j in range(len(rows))]  # type: ignore[index]
    if isinstance(out, list | tuple) and out and all(hasattr(v, "shape") for v in out):
        columns = [split(v, rows) for v in out]
        if any(c is None for c in columns):
            return None
        return [type(out)(c[j] for c in columns) for j in range(len(rows))]  # type: ignore[index]
    arr = out if hasattr(out, "shape") and hasattr(out, "__len__") else np.asarray(out)
    if getattr(arr, "ndim", 0) < 1 or len(arr) != total:
        return None
    if isinstance(arr, np.ndarray):
        return list(np.split(arr, cuts))
    bounds = [0, *cuts.tolist(), total]
    return [arr[bounds[j] : bounds[j + 1]] for j in range(len(rows))]
