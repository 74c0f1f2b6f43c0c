"""Running one fleet size of a benchmark in its own process, so peak RSS is that size's alone."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def run_child(script: str, w: int, args: list[str], timeout_s: float) -> dict[str, Any] | None:
    """`script --one W args...`; its last stdout line is the JSON result. None (after printing
    the child's stderr) when it failed."""
    out = subprocess.run([sys.executable, script, "--one", str(w), *args], capture_output=True,
                         text=True, timeout=timeout_s)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        print(f"W={w}: the measuring process failed (exit {out.returncode})")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])
