"""What the benchmark scripts share: the machine, and printing a result as JSON or as aligned
lines. What they share with the tests (free ports, reusing finished runs, the stand-in
pretrained body) is product code: ``cropdoc.testing``."""

from __future__ import annotations

import json
import os
import platform


def machine() -> str:
    """The processor and core count, for the record."""
    return f"{platform.machine()}, {os.cpu_count()} cores"


def report(result: dict, as_json: bool) -> None:
    """Print ``result``: one JSON document, or one aligned ``key: value`` line per entry."""
    if as_json:
        print(json.dumps(result, indent=1))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:>{width}}: {value}")
