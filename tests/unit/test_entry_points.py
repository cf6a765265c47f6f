"""Every entry point imports in a fresh interpreter of this environment (a partial install once
failed with `No module named 'opentelemetry'` at `import prefect`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

MODULES = [
    "prefect",
    "prefect.flow_engine",
    "prefect_dask",
    "prefect_kubernetes",
    "kopf",
    "kubernetes",
    "distributed",
    "dask_kubernetes.operator",
    "xradio.measurement_set",
    "ducc0",
    "astropy.io.fits",
    "matplotlib",
    "radps_operator.cli",
    "radps_operator.local.runner",
    "radps_flows.catalog",
    "radps_flows.pipelines.imaging",
    "radps_flows.pipelines.synthesize",
]


def test_every_module_imports_in_a_fresh_interpreter():
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    result = subprocess.run(
        [sys.executable, "-c", code, *MODULES], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize(
    "command",
    [[str(BIN / "radps"), "--version"], [sys.executable, "-m", "radps_operator", "--version"]],
    ids=["console-script", "python-m"],
)
def test_cli_entry_points(command):
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("radps ")


def test_core_has_no_orchestration_imports():
    """The array core stays pure: Prefect wraps it, never the other way round."""
    core = Path(__file__).resolve().parents[2] / "flows" / "radps_flows" / "core"
    offenders = [
        path.name
        for path in core.glob("*.py")
        if any(
            line.lstrip().startswith(("import prefect", "from prefect", "import kopf"))
            for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []


def test_the_operator_process_never_imports_the_generated_kubernetes_clients():
    """`radps operator` keeps kubernetes and kubernetes_asyncio out of its process: kopf
    imports their models (~50 MiB) whenever they are installed, and nothing of ours uses
    them (radps_operator.kube calls the API server over kopf's login)."""
    probe = (
        "import sys\n"
        "from radps_operator.cli import keep_generated_clients_out\n"
        "keep_generated_clients_out()\n"
        "import radps_operator.handlers\n"
        "print(sorted({m.split('.')[0] for m, v in sys.modules.items() if v is not None}"
        " & {'kubernetes', 'kubernetes_asyncio', 'pykube'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_operator_talks_to_prefect_without_prefects_client():
    """The operator's gateway speaks Prefect's REST API and event stream over httpx and
    websockets: Prefect's client and schemas cost ~33 MiB of an operator's ~90 MiB at rest.
    Neither its modules nor a lazy import inside one may bring them back."""
    probe = (
        "import sys\n"
        "from radps_operator.cli import keep_generated_clients_out\n"
        "keep_generated_clients_out()\n"
        "import radps_operator.handlers, radps_operator.prefect_gateway\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'prefect_kubernetes'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    package = Path(__file__).resolve().parents[2] / "operator" / "radps_operator"
    # work_pool runs in the Prefect worker's pod, local/ is `radps run`'s: both use Prefect
    in_operator = [path for path in package.glob("*.py") if path.name != "work_pool.py"]
    lazy = [
        f"{path.name}: {line.strip()}"
        for path in in_operator
        for line in path.read_text().splitlines()
        if line.lstrip().startswith(("import prefect", "from prefect"))
    ]
    assert lazy == []
