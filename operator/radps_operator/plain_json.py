"""Bounds every value of a manifest must keep before any schema sees it.

The schema validators (Pydantic, jsonschema) recurse, and Python's `int`/`json` have their own
limits, so a document nested 1,000 deep or holding a 5,000-digit integer would crash them rather
than be rejected. This walk is iterative and runs first, for `radps validate` and the operator
alike (the API server admits what its structural schema allows, parameters are free-form).
"""

from __future__ import annotations

import math
from typing import Any

from radps_operator.manifest_yaml import MAX_DEPTH, MAX_VALUES, TooLargeInteger

INT64 = 2**63


class Unbounded(Exception):
    """The document is too deep or too large to check any further."""


def field_path(prefix: str, key: str | int) -> str:
    """Dotted, list indexes included (`spec.parameters.mask.1`), as parameter errors are."""
    return f"{prefix}.{key}" if prefix else str(key)


def checked_copy(value: Any, prefix: str = "") -> tuple[Any, list[tuple[str, str]]]:
    """A copy of `value` with every value JSON or the API server could not hold replaced by
    None, and (field, message) for each: non-finite numbers, integers beyond int64 (Python
    cannot even print one of 5,000 digits), non-string keys, non-JSON types. Raises Unbounded
    (the field in its message) past MAX_DEPTH or MAX_VALUES, where nothing else is checked."""
    problems: list[tuple[str, str]] = []
    root: list[Any] = [None]
    stack: list[tuple[Any, str, int, Any, Any]] = [(value, prefix, 1, root, 0)]
    count = 0
    while stack:
        item, path, depth, parent, slot = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise Unbounded(f"{prefix or '(document)'}: more than {MAX_VALUES:,} values")
        if isinstance(item, dict | list) and depth > MAX_DEPTH:
            raise Unbounded(f"{path or '(document)'}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            parent[slot] = copy = {}
            for key, child in item.items():
                if isinstance(key, str):
                    stack.append((child, field_path(path, key), depth + 1, copy, key))
                else:
                    problems.append((path or "(document)", f"key {key!r} is not a string"))
        elif isinstance(item, list):
            parent[slot] = copy = [None] * len(item)
            stack.extend(
                (child, field_path(path, i), depth + 1, copy, i) for i, child in enumerate(item)
            )
        else:
            problem = _scalar_problem(item)
            parent[slot] = None if problem else item
            if problem:
                problems.append((path or "(document)", problem))
    return root[0], problems


def _scalar_problem(item: Any) -> str | None:
    if isinstance(item, bool) or item is None or isinstance(item, str):
        return None
    if isinstance(item, int):
        return (
            None if -INT64 <= item < INT64 else "integer out of range: must fit in 64 bits (int64)"
        )
    if isinstance(item, float):
        return None if math.isfinite(item) else f"must be a finite number, got {item}"
    if isinstance(item, TooLargeInteger):
        return f"integer of {item.digits} digits is out of range: must fit in 64 bits (int64)"
    return f"a {type(item).__name__} is not a JSON value"
