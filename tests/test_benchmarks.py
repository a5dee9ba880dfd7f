"""The GPU script cannot rot while no GPU is at hand: its every code path runs here on the CPU with small models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.smoke


def test_cuda_check_runs_on_the_cpu_with_small_models(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cuda_check.py"), "--device", "cpu", "--small"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-1] == "9 passed, 0 failed", proc.stdout[-3000:]  # 6 tiny conversions, 2 mapped, 1 sweep
    assert any('"run": "convert --device-map cpu"' in line for line in lines)
    assert any('"identical_bytes": true' in line for line in lines)  # offloaded conversion: the same bytes
    assert any('"run": "sweep bf16 --device-map cpu"' in line for line in lines)
