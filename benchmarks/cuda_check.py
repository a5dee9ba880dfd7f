"""CUDA / low-precision check, for a machine with a GPU (nothing depends on it; CI never runs it).

1. Converts tiny config-built models on `--device cuda` in float32, bfloat16 and float16 and prints the validation
   numbers: float32 must pass at 1e-4, low precision within 2x the floor measured in the same run.
2. Benchmark 1 on the GPUs: the random 1.2B Llama of `benchmarks/convert.py` (bf16, 5 shards) converted with
   `--device-map auto` across the visible GPUs, against the same baseline (load with the same device map, the same
   calibration forwards, `save_pretrained`), with wall time and peak GPU memory; then the same conversion with
   `--max-memory` at a third of the weights on GPU 0, the rest offloaded, which must write identical bytes.
3. A bf16 sweep of SmolLM2-135M-Instruct with `--device-map auto` (k in -1, 0, 1, both modes, 16 eval prompts).

    PYTHONPATH=. python benchmarks/cuda_check.py [--only tiny,bench,sweep]

`--device cpu --small` runs the same code paths on the CPU with small models (the test suite does, so the script
cannot rot while no GPU is at hand).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

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


def tiny_survey(tmp: Path, device: str, small: bool) -> list[dict[str, Any]]:
    results = []
    families = ("llama", "qwen3") if small else ("llama", "qwen3", "gemma", "gpt_oss", "mixtral")
    cases = [(name, dtype) for name in families for dtype in ("float32", "bfloat16", "float16")]
    sources = {}
    for name, dtype in cases:
        if name not in sources:
            sources[name] = FIXTURES[name](tmp / name)
        start = time.perf_counter()
        try:
            opts = ConvertOptions(device=device, dtype=dtype, allow_remote_code=name == "mixtral")
            r = convert(str(sources[name]), tmp / f"{name}-{dtype}", opts)
            row = _row(name, dtype, r)
        except Exception as err:  # report and go on: this is a survey
            row = {"model": name, "dtype": dtype, "passed": False, "error": f"{type(err).__name__}: {err}"[:300]}
        row["s"] = round(time.perf_counter() - start, 1)
        results.append(row)
        print(json.dumps(row), flush=True)
    if small:
        return results
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
        r = convert(str(wide), tmp / f"wide-{dtype}", ConvertOptions(device=device, dtype=dtype))
        row = {**_row("llama-1024x12", dtype, r), "s": round(r.seconds, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def _gpu_peak_gib() -> float:
    if not torch.cuda.is_available():
        return 0.0
    return sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**30


def _reset_peaks() -> None:
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)


def bench_device_map(tmp: Path, device_map: str, small: bool) -> list[dict[str, Any]]:
    """Benchmark 1 with a device map: baseline vs convert, then the offloaded conversion (same bytes)."""
    import shutil

    import convert as convert_bench  # benchmarks/convert.py
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bakesteer.batching import left_padded_batches, pad_token_id
    from bakesteer.placement import free_memory, input_device
    from bakesteer.prompts import load_prompt_set, render_prompts

    model_dir, prompts = tmp / "llama1b", tmp / "llama1b-prompts"
    model_dir.mkdir(parents=True)
    if small:
        save_model(
            __import__("transformers").LlamaConfig(**{**LLAMA_LIKE, "hidden_size": 256, "intermediate_size": 512}),
            model_dir, dtype=torch.bfloat16, max_shard_size="2MB",
        )  # fmt: skip
        prompts.mkdir(parents=True)
        for role in ("positive", "negative"):
            lines = load_prompt_set(None, role).prompts[:16]
            (prompts / f"{role}.txt").write_text("\n".join(lines) + "\n")
    else:
        convert_bench.child_prepare("llama1b", model_dir, prompts)
    weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 2**30
    options = ConvertOptions(
        alpha=1.0, dtype="bfloat16", device_map=device_map, positive=prompts / "positive.txt",
        negative=prompts / "negative.txt",
    )  # fmt: skip
    rows = []

    _reset_peaks()
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map=device_map).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    device = input_device(model)
    with torch.no_grad():
        for role in ("positive", "negative"):
            ids = render_prompts(tok, load_prompt_set(prompts / f"{role}.txt", role).calibration, chat_template=True)
            for batch in left_padded_batches(ids, options.batch_size, pad_token_id(tok)):
                batch = batch.to(device)
                model.model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                )
    model.save_pretrained(tmp / "baseline")
    baseline = {"run": "baseline", "wall_s": round(time.perf_counter() - start, 2), "gpu_peak_gib": _gpu_peak_gib()}
    del model
    free_memory()
    shutil.rmtree(tmp / "baseline")
    rows.append(baseline)
    print(json.dumps(baseline), flush=True)

    _reset_peaks()
    r = convert(str(model_dir), tmp / "mapped", options)
    mapped = {
        **_row("llama1b", "bfloat16", r),
        "run": f"convert --device-map {device_map}",
        "wall_s": round(r.seconds, 2),
    }
    mapped |= {"gpu_peak_gib": _gpu_peak_gib(), "stages": r.timings, "ratio_wall": r.seconds / baseline["wall_s"]}
    rows.append(mapped)
    print(json.dumps(mapped), flush=True)

    cap = f"{max(weights / 3, 0.001):.3f}GiB"
    limits = f"0={cap},cpu={cap}" if torch.cuda.is_available() else f"cpu={cap}"
    r2 = convert(str(model_dir), tmp / "offloaded", options.replace(max_memory=limits))
    same = all((tmp / "mapped" / f.name).read_bytes() == f.read_bytes() for f in sorted((tmp / "offloaded").iterdir()))
    offloaded = {
        **_row("llama1b", "bfloat16", r2),
        "run": f"convert --max-memory {limits}",
        "wall_s": round(r2.seconds, 2),
    }
    offloaded |= {"identical_bytes": same, "passed": r2.validation.passed and same}
    rows.append(offloaded)
    print(json.dumps(offloaded), flush=True)
    return rows


def sweep_device_map(tmp: Path, device_map: str, small: bool) -> dict[str, Any]:
    from bakesteer.sweep import sweep

    if small:
        source = str(FIXTURES["llama"](tmp / "sweep-src"))
    else:
        from children import prepare_smollm2

        prepare_smollm2(tmp / "smollm2")  # creates the folder
        source = str(tmp / "smollm2")
    eval_file = tmp / "eval.txt"
    from bakesteer.prompts import load_prompt_set

    eval_file.write_text("\n".join(load_prompt_set(None, "eval").prompts[:16]) + "\n")
    options = ConvertOptions(
        dtype="bfloat16", device_map=device_map, eval_prompts=eval_file, max_new_tokens=8 if small else 32
    )
    start = time.perf_counter()
    result = sweep(source, tmp / "sweep", options, alphas=(-1.0, 0.0, 1.0))
    row = {
        "run": f"sweep bf16 --device-map {device_map}",
        "s": round(time.perf_counter() - start, 1),
        "runs": [
            {"k": r.alpha, "mode": r.mode, "kl": r.metrics.get("kl"), "ppl": r.metrics.get("perplexity")}
            for r in result.runs
        ],
        "passed": len(result.runs) == 6 and all(r.metrics.get("kl") is not None for r in result.runs),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="small models: a smoke test of every code path")
    parser.add_argument("--only", default="tiny,bench,sweep")
    args = parser.parse_args()
    set_progress_bars(False)
    import transformers

    name = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {name}", flush=True)
    device_map = "auto" if args.device == "cuda" else "cpu"
    parts = set(args.only.split(","))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        if "tiny" in parts:
            results += tiny_survey(tmp / "tiny", args.device, args.small)
        if "bench" in parts:
            results += [r for r in bench_device_map(tmp / "bench", device_map, args.small) if "passed" in r]
        if "sweep" in parts:
            results.append(sweep_device_map(tmp / "sweep", device_map, args.small))
    failed = [r for r in results if not r.get("passed")]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
