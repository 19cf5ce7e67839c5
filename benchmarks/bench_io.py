"""Shared by the benchmark scripts (a sibling module, not a package)."""
from __future__ import annotations

import json
from typing import Any


def write_report(report: dict[str, Any], path: str | None) -> dict[str, Any]:
    """Writes `report` as JSON to `path` (when given) and returns it."""
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    return report
