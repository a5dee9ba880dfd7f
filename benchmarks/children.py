"""Shared by the benchmarks: every measurement runs in a fresh process (its own peak memory, no warm caches)."""

from __future__ import annotations

import json
import subprocess
import sys


def run_child(script: str, kind: str, *args: str) -> dict:
    """Run ``script --child KIND ARGS...`` with this interpreter and return the JSON its last output line holds."""
    proc = subprocess.run([sys.executable, script, "--child", kind, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
