"""The e2e modules share one installed release: installing it takes minutes, and the fault and
mission tests need the same one. The test that uninstalls it runs after every other e2e test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import release
from tests.k8s import cluster_with_node

HERE = Path(__file__).parent


@pytest.fixture(scope="package")
def installed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The chart installed (see :mod:`tests.e2e.release`) until the e2e tests are done;
    yields the host folder the pods see as /data. Without a node, the tests skip here."""
    yield from release.install(cluster_with_node(request), tmp_path_factory)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``uninstalls_release`` go after the other e2e tests (the release is gone
    after them), and before anything outside this folder."""
    last = [item for item in items if item.get_closest_marker("uninstalls_release")]
    if not last:
        return
    rest = [item for item in items if item not in last]
    ours = [i for i, item in enumerate(rest) if item.path.parent == HERE]
    at = ours[-1] + 1 if ours else len(rest)
    items[:] = [*rest[:at], *last, *rest[at:]]
