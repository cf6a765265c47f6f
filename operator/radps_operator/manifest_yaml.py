"""YAML to plain JSON values, safely: what a PipelineRun manifest may contain.

A manifest ends up as JSON in the API server, so anything JSON cannot hold is an error here
rather than a surprise later: no dates, sets, binary or Python tags, no duplicate keys (the
second would silently win), no non-string keys. Unquoted dates (`output: 2024-05-01`) stay the
strings they were written as, as `kubectl apply` reads them. libyaml's C parser is used when
PyYAML has it (about 8x faster on large files), and the size of the document is bounded before
anything is built: its bytes, its nesting depth and the number of values once aliases are
expanded (a "billion laughs" document is a few hundred bytes of YAML).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 3 * 1024 * 1024
"""Twice etcd's 1.5 MiB object limit: anything larger can never be applied."""
MAX_DEPTH = 32
"""Nesting levels of collections; a real manifest uses about 6."""
MAX_VALUES = 200_000
"""Values in the document with aliases expanded."""
MAX_INTEGER_DIGITS = 19
"""Beyond int64 (what the API server stores) an integer is certainly a mistake; longer digit
strings are not converted at all (Python refuses over 4,300 digits with a ValueError)."""

_BASE = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
_JSON_TAGS = (
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:seq",
)


class ManifestYAMLError(ValueError):
    """The text is not a plain-JSON YAML document; `line` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        self.message = message
        self.line = line
        self.column = column
        super().__init__(message)


class TooLargeInteger:
    """Stands in for an integer literal too long to be one; the field check reports it with
    its path (see :mod:`radps_operator.plain_json`)."""

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"<integer of {self.digits} digits>"


class _Loader(_BASE):  # type: ignore[misc,valid-type]
    yaml_constructors = {
        tag: fn for tag, fn in SafeConstructor.yaml_constructors.items() if tag in _JSON_TAGS
    }


def _where(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _construct_int(loader: _Loader, node: ScalarNode) -> int | TooLargeInteger:
    digits = sum(c.isdigit() for c in node.value)
    if digits > MAX_INTEGER_DIGITS:
        return TooLargeInteger(digits)
    return SafeConstructor.construct_yaml_int(loader, node)


def _construct_timestamp(loader: _Loader, node: ScalarNode) -> str:
    return node.value  # as kubectl: an unquoted date is the string written


def _construct_mapping(loader: _Loader, node: MappingNode) -> Iterator[dict[str, Any]]:
    data: dict[str, Any] = {}
    yield data  # filled afterwards, so deep nesting builds without recursion
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        line, column = _where(key_node)
        if not isinstance(key, str):
            raise ManifestYAMLError(
                f"mapping key {key_node.value!r} is a {type(key).__name__}, not a string: quote it",
                line,
                column,
            )
        if key in seen:
            raise ManifestYAMLError(
                f"duplicate key {key!r} (first on line {seen[key]}): the second would "
                "silently replace the first",
                line,
                column,
            )
        seen[key] = line
    loader.flatten_mapping(node)  # `<<: *anchor` merge keys, explicit keys winning
    for key_node, value_node in node.value:
        data[loader.construct_object(key_node)] = loader.construct_object(value_node)


def _reject_tag(loader: _Loader, node: Node) -> None:
    line, column = _where(node)
    raise ManifestYAMLError(
        f"tag {node.tag!r} has no JSON equivalent: a manifest holds only strings, numbers, "
        "booleans, null, lists and mappings",
        line,
        column,
    )


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor(None, _reject_tag)


def _check_size(root: Node) -> None:
    """Depth and expanded value count of the composed node graph, without recursion; an
    alias is the same node object reached again, so its size is counted each time."""
    expanded: dict[int, int] = {}
    stack: list[tuple[Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, children_done = stack.pop()
        if id(node) in expanded:
            continue
        children = _children(node)
        if not children_done:
            if depth > MAX_DEPTH:
                line, column = _where(node)
                raise ManifestYAMLError(f"nested deeper than {MAX_DEPTH} levels", line, column)
            stack.append((node, depth, True))
            stack.extend((child, depth + 1, False) for child in children)
            continue
        total = 1 + sum(expanded.get(id(child), 1) for child in children)
        if total > MAX_VALUES:
            line, column = _where(node)
            raise ManifestYAMLError(
                f"expands to more than {MAX_VALUES:,} values (through YAML aliases?)",
                line,
                column,
            )
        expanded[id(node)] = total


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_documents(text: str) -> list[Any]:
    """Every non-empty document of `text` as plain JSON values, or ManifestYAMLError."""
    size = len(text.encode())
    if size > MAX_BYTES:
        raise ManifestYAMLError(
            f"{size / 2**20:.1f} MiB: larger than any Kubernetes object can be "
            f"(at most {MAX_BYTES // 2**20} MiB read)"
        )
    loader = _Loader(text)
    documents = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _check_size(node)
            document = loader.construct_document(node)
            if document is not None:
                documents.append(document)
    except ManifestYAMLError:
        raise
    except (yaml.YAMLError, RecursionError) as exc:  # RecursionError: the pure-Python parser
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
        if isinstance(exc, ConstructorError) and exc.context:
            problem = f"{exc.context}: {problem}"
        raise ManifestYAMLError(
            f"YAML syntax error: {problem}",
            mark.line + 1 if mark else None,
            mark.column + 1 if mark else None,
        ) from None
    finally:
        loader.dispose()
    return documents
