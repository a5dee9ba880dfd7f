"""CUDA / low-precision check, for a machine with a GPU (nothing depends on it; CI never runs it).

Converts tiny config-built models on `--device cuda` in float32, bfloat16 and float16 and prints the validation
numbers: float32 must pass at 1e-4, low precision within 2x the floor measured in the same run.

    PYTHONPATH=. python benchmarks/cuda_check.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch
from fixtures import FIXTURES, LLAMA_LIKE, save_model

from bakesteer import ConvertOptions, convert
from bakesteer.progress import set_progress_bars


def _row(model: str, dtype: str, result: Any) -> dict[str, Any]:
    v = result.validation
    return {
        "model": model,
        "dtype": dtype,
        "passed": v.passed,
        "rel": v.relative_diff,
        "tol": v.tolerance,
        "floor": v.floor_relative,
        "greedy": v.greedy_equal,
        "base": v.base_relative_diff,
    }


def main() -> None:
    set_progress_bars(False)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name(0)}")
    results = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        cases = [
            (name, dtype)
            for name in ("llama", "qwen3", "gemma", "gpt_oss", "mixtral")
            for dtype in ("float32", "bfloat16", "float16")
        ]
        sources = {}
        for name, dtype in cases:
            if name not in sources:
                sources[name] = FIXTURES[name](tmp / name)
            start = time.perf_counter()
            try:
                opts = ConvertOptions(device="cuda", dtype=dtype, allow_remote_code=name == "mixtral")
                r = convert(str(sources[name]), tmp / f"{name}-{dtype}", opts)
                row = _row(name, dtype, r)
            except Exception as err:  # report and go on: this is a survey
                row = {"model": name, "dtype": dtype, "passed": False, "error": f"{type(err).__name__}: {err}"[:300]}
            row["s"] = round(time.perf_counter() - start, 1)
            results.append(row)
            print(json.dumps(row), flush=True)
        # a wider model: the bf16 floor on real GPU kernels
        from transformers import LlamaConfig

        wide = save_model(
            LlamaConfig(
                **{
                    **LLAMA_LIKE,
                    "hidden_size": 1024,
                    "intermediate_size": 2816,
                    "num_hidden_layers": 12,
                    "num_attention_heads": 16,
                    "num_key_value_heads": 4,
                }
            ),
            tmp / "wide",
        )
        for dtype in ("float32", "bfloat16"):
            r = convert(str(wide), tmp / f"wide-{dtype}", ConvertOptions(device="cuda", dtype=dtype))
            print(json.dumps({**_row("llama-1024x12", dtype, r), "s": round(r.seconds, 1)}), flush=True)
    failed = [r for r in results if not r["passed"]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")


if __name__ == "__main__":
    main()
