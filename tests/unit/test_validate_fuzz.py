"""Fuzzing the validator (issue 12): generated manifests, mutated from the shipped examples,
go through `radps validate`'s path (YAML text) and the operator's (the spec as the API server
hands it over). Every one is either valid or rejected with InvalidPipelineRun whose errors
each name a field and say what is expected, within a second; nothing else may escape."""

from __future__ import annotations

import copy
import gc
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radps_flows.catalog import pipelines
from radps_operator.validation import (
    InvalidPipelineRun,
    parse_manifest,
    validate_manifest,
    validate_spec,
)

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "manifests" / "examples"
BASES = [yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES_DIR.glob("*.yaml"))]
ALLOWED = ("radps",)
EXAMPLES = int(os.environ.get("RADPS_FUZZ_EXAMPLES", "10000"))
ROOTS = ("apiVersion", "kind", "metadata", "spec", "(document)", "(manifest)", "<input>")
UNCLEAR = ("is not valid under any of the given schemas", "Traceback", "object at 0x")

NAMES = [
    "input", "output", "imsize", "cell_arcsec", "weighting", "clean", "mask", "rms_box",
    "model", "model_image", "solint", "specmode", "niter", "n_times", "workers", "limits",
    "requests", "memory", "cpu", "timeoutSeconds", "dask", "resources", "image", "pipeline",
]  # fmt: skip
STRINGS = [
    "", "2024-05-01", "/proc/self/environ", "../../etc", "/data", "/data/in.ms", "int", "inf",
    "briggs", "cube", "4Gi", "500m", "-1", "radps", "attacker/evil:1", "imaging", "x" * 300,
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**25), max_value=10**25),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(STRINGS),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)
YAML_SNIPPETS = [
    "    imsize: 256\n    imsize: 512\n",  # duplicate key
    "    model_image: !!binary aGVsbG8=\n",
    "    mask: !!set {a, b}\n",
    "    output: 2024-05-01\n",
    "    niter: " + "9" * 5000 + "\n",
    "    model: " + "[" * 60 + "]" * 60 + "\n",
    "    x: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n    y: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
    "    z: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n    w: [*c, *c, *c, *c, *c, *c, *c, *c]\n",
    "    1: one\n",
    "    cell_arcsec: .nan\n",
    "  [unclosed\n",
    "\t tab: x\n",
]


def _paths(value: Any) -> list[tuple]:
    """Paths of the values in `value`, the first 8 levels (a generated one may be 2,000 deep)."""
    out: list[tuple] = []
    stack: list[tuple[Any, tuple]] = [(value, ())]
    while stack:
        item, prefix = stack.pop()
        out.append(prefix)
        if len(prefix) < 8 and isinstance(item, dict):
            stack += [(v, (*prefix, k)) for k, v in item.items()]
        elif len(prefix) < 8 and isinstance(item, list):
            stack += [(v, (*prefix, i)) for i, v in enumerate(item[:20])]
    return sorted(out, key=lambda p: [str(x) for x in p])


def _mutate(document: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    doc = copy.deepcopy(document)
    for _ in range(data.draw(st.integers(1, 4))):
        paths = _paths(doc)[1:]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        action = data.draw(st.sampled_from(["set", "delete", "add", "deep", "long"]))
        key = path[-1]
        if action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.sampled_from(NAMES))] = data.draw(VALUES)
        elif action == "deep":
            value: Any = data.draw(SCALARS)
            for _ in range(data.draw(st.sampled_from([10, 40, 1000]))):
                value = [value]
            parent[key] = value
        elif action == "long":
            parent[key] = [data.draw(SCALARS)] * data.draw(st.integers(5, 500))
        else:
            parent[key] = data.draw(VALUES)
    return doc


def _assert_clear(invalid: InvalidPipelineRun, document: dict[str, Any]) -> None:
    assert invalid.errors
    for error in invalid.errors:
        first = error.field.split(".")[0].split(":")[0]
        assert first in ROOTS or first in document, error
        assert error.message and len(error.message) <= 600, error
        assert not any(u in error.message for u in UNCLEAR), error


STATS = {"valid": 0, "rejected": 0, "slowest_s": 0.0}


def _check(run: Any, document: dict[str, Any]) -> None:
    """A case's CPU time (this thread's): wall time on a shared 2-core machine measures the
    neighbours."""
    started = time.thread_time()
    try:
        run()
        STATS["valid"] += 1
    except InvalidPipelineRun as invalid:
        _assert_clear(invalid, document)
        STATS["rejected"] += 1
    took = time.thread_time() - started
    STATS["slowest_s"] = max(STATS["slowest_s"], took)
    assert took < 1.0


@pytest.fixture(scope="module")
def catalog():
    catalog = pipelines()
    validate_manifest(BASES[0], ALLOWED, catalog)  # imports and caches: not a case's time
    gc.freeze()  # the science stack the catalog imported is not rescanned by every collection
    yield catalog
    gc.unfreeze()
    print(f"fuzzed validation calls: {STATS}")  # shown with -s; the figures of issue 12


@settings(
    max_examples=EXAMPLES,
    deadline=None,  # a case's own time is checked: validation alone, under 1 s
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def test_generated_manifests_never_crash_either_path(catalog, data):
    document = _mutate(data.draw(st.sampled_from(BASES)), data)
    try:
        text = yaml.dump(document, Dumper=yaml.CSafeDumper, sort_keys=False)
    except (yaml.YAMLError, RecursionError):  # PyYAML cannot write some; the operator path runs
        text = None
    if text is not None:
        if data.draw(st.booleans()):
            lines = text.splitlines(keepends=True)
            at = data.draw(st.integers(0, len(lines)))
            text = (
                "".join(lines[:at])
                + data.draw(st.sampled_from(YAML_SNIPPETS))
                + "".join(lines[at:])
            )
        _check(lambda: validate_manifest(parse_manifest(text), ALLOWED, catalog), document)
    spec = document.get("spec")
    if isinstance(spec, dict):  # the API server hands the operator objects only
        _check(lambda: validate_spec(spec, catalog, ALLOWED), {"spec": spec})
