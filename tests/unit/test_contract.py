"""The seams between modules (issue 13): the operator/flow contract imports nothing, so both
sides load it without each other's stack, and the kopf handlers reach the follower only
through its public methods."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from radps_flows import contract
from radps_operator import handlers


def test_the_contract_module_imports_only_the_standard_library():
    tree = ast.parse(Path(contract.__file__).read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert modules and all(m.split(".")[0] in sys.stdlib_module_names for m in modules), modules


def test_the_operator_decides_without_prefect_or_dask():
    """reconcile (the operator's pure decisions) loads neither Prefect nor Dask, nor the
    science stack, even when it sizes a run's Dask cluster; checked in a fresh interpreter."""
    probe = (
        "import sys; from radps_operator import reconcile, api; "
        "reconcile.job_variables('ns', 'n', 'u', api.PipelineRunSpec(pipeline='imaging', "
        "parameters={}), __import__('radps_operator.settings').settings.OperatorSettings()); "
        "print(sorted(m for m in ('prefect', 'dask', 'distributed', 'prefect_dask', 'xradio', "
        "'ducc0') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]", loaded


def test_handlers_use_only_the_follower_public_api():
    source = Path(handlers.__file__).read_text()
    assert not re.findall(r"follower\.(_\w+|by_flow_run|runs)\b", source)


def test_no_pipeline_imports_another_pipelines_private_names():
    """Pipelines are siblings: what they share lives in pipelines.stages and .common."""
    folder = Path(contract.__file__).parent / "pipelines"
    borrowed = []
    for module in sorted(folder.glob("*.py")):
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("radps_"):
                names = [a.name for a in node.names if a.name.startswith("_")]
                borrowed += [f"{module.name}: {node.module}.{name}" for name in names]
    assert not borrowed, borrowed
