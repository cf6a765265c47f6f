"""The terminal of the `radps` commands: one stdout and one stderr console, and `-o json|yaml`."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

stdout = Console(highlight=False)
# Messages are never wrapped: an error names a path, and a wrapped path cannot be copied or grepped.
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def print_as(value: Any, output: str) -> None:
    """``value`` as JSON or YAML (``output``), unstyled, on stdout."""
    if output == "json":
        stdout.out(json.dumps(value, indent=2, default=str))
    else:
        import yaml

        stdout.out(yaml.safe_dump(value, sort_keys=False, default_flow_style=False), end="")


def overrides_or_report(items: list[str]) -> dict[str, Any] | None:
    """``-p key=value`` items as a dict (values read as YAML), or None after printing each
    malformed one in red (`radps rerun`, `radps resume`, locally and on a cluster)."""
    from rich.markup import escape

    from radps_operator.local.manifests import parse_overrides

    values, errors = parse_overrides(items)
    for error in errors:
        stderr.print(f"[red]{escape(str(error))}[/]")
    return None if errors else values
