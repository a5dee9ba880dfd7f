"""Shared by the benchmarks: every measurement runs in a fresh process (its own peak memory, no warm caches)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_child(script: str, kind: str, *args: str) -> dict:
    """Run ``script --child KIND ARGS...`` with this interpreter and return the JSON its last output line holds."""
    proc = subprocess.run([sys.executable, script, "--child", kind, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_mib() -> float:
    """This process's peak resident memory in MiB.

    VmHWM belongs to this address space (reset by exec); ru_maxrss can carry the parent's peak across fork+exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_smollm2(model_dir: Path) -> dict[str, Any]:
    """Not timed: a plain float32 safetensors copy of the embedded SmolLM2-135M-Instruct (one model.safetensors,
    like the Hub repository), the usual kind of source."""
    import torch

    from bakesteer.demo import smollm2_gguf
    from bakesteer.dequantize import materialize_gguf
    from bakesteer.source import resolve_source

    model_dir.mkdir(parents=True, exist_ok=True)
    materialize_gguf(resolve_source(str(smollm2_gguf())), torch.float32, model_dir)
    return {"torch": torch.__version__}
