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


REPO = Path(__file__).resolve().parents[2]


def _importing(paths: list[Path], *modules: str) -> list[str]:
    """`file: line` of every import of ``modules``, at the top of a file or inside a
    function (a lazy import loads the module all the same)."""
    starts = tuple(f"{verb} {module}" for module in modules for verb in ("import", "from"))
    return [
        f"{path.name}: {line.strip()}"
        for path in paths
        for line in path.read_text().splitlines()
        if line.lstrip().startswith(starts)
    ]


def _loaded_by_the_operator(*top_level: str) -> list[str]:
    """Which of ``top_level`` modules the operator's process has loaded once its handlers
    and Prefect gateway are imported, as `radps operator` starts them."""
    probe = (
        "import sys\n"
        "from radps_operator.cli import keep_generated_clients_out\n"
        "keep_generated_clients_out()\n"
        "import radps_operator.handlers, radps_operator.prefect_gateway\n"
        "print(' '.join(sorted({m.split('.')[0] for m, v in sys.modules.items() if v}"
        f" & {set(top_level)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_core_has_no_orchestration_imports():
    """The array core stays pure: Prefect wraps it, never the other way round."""
    core = REPO / "flows" / "radps_flows" / "core"
    assert _importing(sorted(core.glob("*.py")), "prefect", "kopf") == []


def test_the_operator_process_never_imports_the_generated_kubernetes_clients():
    """`radps operator` keeps kubernetes and kubernetes_asyncio out of its process: kopf
    imports their models (~50 MiB) whenever they are installed, and nothing of ours uses
    them (radps_operator.kube calls the API server over kopf's login)."""
    assert _loaded_by_the_operator("kubernetes", "kubernetes_asyncio", "pykube") == []


def test_the_operator_talks_to_prefect_without_prefects_client():
    """The operator's gateway speaks Prefect's REST API and event stream over httpx and
    websockets: Prefect's client and schemas cost ~33 MiB of an operator's ~90 MiB at rest.
    Neither its modules nor a lazy import inside one may bring them back."""
    assert _loaded_by_the_operator("prefect", "prefect_kubernetes") == []
    package = REPO / "operator" / "radps_operator"
    # work_pool runs in the Prefect worker's pod, local/ is `radps run`'s: both use Prefect
    in_operator = [path for path in sorted(package.glob("*.py")) if path.name != "work_pool.py"]
    assert _importing(in_operator, "prefect") == []
