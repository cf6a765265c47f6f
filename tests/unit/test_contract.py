"""The seams between modules (issue 13): the operator/flow contract imports nothing, so both
sides load it without each other's stack; the catalog and validation load only the light
parameter models; the kopf handlers reach the follower only through its public methods; no
module uses another's private names."""

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
    science stack, even when it sizes a run's Dask cluster or reads a flow run's progress;
    checked in a fresh interpreter."""
    probe = (
        "import sys; from datetime import UTC, datetime; "
        "from radps_operator import reconcile, api, settings; "
        "spec = api.PipelineRunSpec(pipeline='imaging', parameters={}); "
        "reconcile.job_variables('ns', 'n', 'u', spec, settings.OperatorSettings()); "
        "snap = reconcile.FlowRunSnapshot(id='f', name='n', state_type='RUNNING', "
        "labels={'radps.io/progress-completed': '1', 'radps.io/progress-total': '3'}); "
        "status = reconcile.status_from_flow_run(api.PipelineRunStatus(), snap, "
        "now=datetime.now(UTC), settings=settings.OperatorSettings(), work_pool='p'); "
        "assert status.progress.summary == '1/3', status.progress; "
        "assert status.prefect.url.endswith('/runs/flow-run/f'), status.prefect.url; "
        "print(sorted(m for m in ('prefect', 'dask', 'distributed', 'prefect_dask', 'xradio', "
        "'ducc0') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]", loaded


def test_progress_labels_read_back_as_written():
    labels = {contract.PROGRESS_COMPLETED_LABEL: "2", contract.PROGRESS_TOTAL_LABEL: "4"}
    assert contract.read_progress(labels) == (2, 4)
    assert contract.read_progress(labels, run_completed=True) == (4, 4)
    assert contract.read_progress({}) is None
    assert contract.read_progress({contract.PROGRESS_TOTAL_LABEL: "x"}) is None


HEAVY = ("prefect", "dask", "distributed", "prefect_dask", "xradio", "ducc0", "xarray", "numpy")


def test_validation_and_the_catalog_load_no_science_stack_nor_prefect():
    """What `radps validate`, `radps pipelines` and the operator's catalog load: the parameter
    models (pydantic), jsonschema and the PipelineRun API, never the science stack or
    Prefect; checked in a fresh interpreter on every example manifest."""
    examples = sorted(Path(__file__).parents[2].glob("manifests/examples/*.yaml"))
    assert len(examples) >= 4
    paths = [str(p) for p in examples]
    probe = (
        "import sys; from radps_operator import validation; from radps_flows import catalog; "
        f"[validation.validate_manifest(validation.load_manifest(p)) for p in {paths}]; "
        "[p.parameter_schema for p in catalog.pipelines().values()]; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]", loaded


def test_parameter_modules_import_only_pydantic_and_each_other():
    folder = Path(contract.__file__).parent / "parameters"
    allowed = {"pydantic", "radps_flows", "__future__"}
    for module in sorted(folder.glob("*.py")):
        tree = ast.parse(module.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        for name in names:
            top = name.split(".")[0]
            assert top in allowed or top in sys.stdlib_module_names, f"{module.name}: {name}"
            if top == "radps_flows":
                assert name.startswith(("radps_flows.parameters", "radps_flows.parameter_rules"))


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


def _private_uses(module: Path) -> list[str]:
    """`from radps_x import _name` and `alias._name` where alias was imported from radps."""
    tree = ast.parse(module.read_text())
    aliases: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name.startswith("radps_")}
        elif isinstance(node, ast.ImportFrom) and (
            (node.module or "").startswith("radps_") or node.level
        ):
            for a in node.names:
                aliases.add(a.asname or a.name)
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{module.name}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{module.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    roots = [Path(contract.__file__).parent, Path(handlers.__file__).parent]
    found = [use for root in roots for m in sorted(root.rglob("*.py")) for use in _private_uses(m)]
    assert not found, found
