"""The seams between modules (issue 13): the operator/flow contract imports nothing, so both
sides load it without each other's stack, and the kopf handlers reach the follower only
through its public methods."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from radps_flows import contract
from radps_operator import handlers


def test_the_contract_module_imports_nothing():
    tree = ast.parse(Path(contract.__file__).read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert not imports, [ast.unparse(n) for n in imports]


def test_handlers_use_only_the_follower_public_api():
    source = Path(handlers.__file__).read_text()
    assert not re.findall(r"follower\.(_\w+|by_flow_run|runs)\b", source)
