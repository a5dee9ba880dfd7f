"""Benchmark: `bakesteer sweep` on SmolLM2-135M-Instruct against the naive loop, in the same run.

The sweep is the default one: k in -1, -0.5, 0, 0.5, 1, both steering modes (10 runs, of which k = 0 is measured
once), 64 eval prompts plus the held-out prompts of both default sets, 64 greedy tokens, every metric. The naive
loop is what a user without `sweep` does to see the same completions, for broadcast steering only (5 runs): for each
k, `bakesteer convert` (a calibration and a validation each), a reload of the written checkpoint with plain
transformers, and greedy generation one prompt at a time on the same prompts. It computes no metric, so it is the
cheaper side of the comparison.

Each measurement is a fresh process on a plain float32 safetensors copy of the embedded GGUF.

    python benchmarks/sweep.py [--max-new-tokens 64] [--eval-prompts 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from children import run_child  # benchmarks/ is the script directory: first on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ALPHAS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def child_prepare(model_dir: Path, eval_file: Path, count: int) -> dict[str, object]:
    """Not timed: the float32 copy of SmolLM2 and the first ``count`` shipped eval prompts."""
    import torch

    from bakesteer.demo import smollm2_gguf
    from bakesteer.dequantize import materialize_gguf
    from bakesteer.prompts import load_prompt_set
    from bakesteer.source import resolve_source

    materialize_gguf(resolve_source(str(smollm2_gguf())), torch.float32, model_dir)
    eval_file.write_text("\n".join(load_prompt_set(None, "eval").prompts[:count]) + "\n")
    return {"torch": torch.__version__}


def child_sweep(model_dir: Path, out: Path, eval_file: Path, tokens: int) -> dict[str, object]:
    from bakesteer import ConvertOptions
    from bakesteer.progress import set_progress_bars
    from bakesteer.sweep import sweep

    set_progress_bars(False)
    start = time.perf_counter()
    result = sweep(str(model_dir), out, ConvertOptions(eval_prompts=eval_file, max_new_tokens=tokens))
    wall = time.perf_counter() - start
    generated = sum(len(s["completion"]) > 0 for r in result.runs for s in r.samples)
    return {"wall_s": wall, "runs": len(result.runs), "completions": generated}


def child_naive(model_dir: Path, out: Path, eval_file: Path, tokens: int, alpha: float) -> dict[str, object]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bakesteer import ConvertOptions, convert
    from bakesteer.progress import set_progress_bars
    from bakesteer.prompts import load_prompt_set, render_prompts

    set_progress_bars(False)
    start = time.perf_counter()
    convert(str(model_dir), out, ConvertOptions(alpha=alpha))
    converted = time.perf_counter() - start
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompts = list(load_prompt_set(eval_file, "eval").prompts)
    prompts += load_prompt_set(None, "positive").heldout + load_prompt_set(None, "negative").heldout
    with torch.no_grad():
        for ids in render_prompts(tokenizer, prompts, chat_template=True):
            model.generate(
                input_ids=torch.tensor([ids]),
                do_sample=False,
                max_new_tokens=tokens,
                pad_token_id=tokenizer.eos_token_id,
            )
    return {"wall_s": time.perf_counter() - start, "convert_s": converted, "prompts": len(prompts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--eval-prompts", type=int, default=64, help="how many of the shipped eval prompts")
    parser.add_argument("--keep", type=Path, help="copy the sweep's output directory here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        paths = [Path(p) for p in rest[:3]]
        if kind == "prepare":
            print(json.dumps(child_prepare(paths[0], paths[1], args.eval_prompts)))
        elif kind == "sweep":
            print(json.dumps(child_sweep(*paths, args.max_new_tokens)))
        else:
            print(json.dumps(child_naive(*paths, args.max_new_tokens, float(rest[3]))))
        return

    flags = ["--max-new-tokens", str(args.max_new_tokens), "--eval-prompts", str(args.eval_prompts)]
    with tempfile.TemporaryDirectory(prefix="bakesteer-bench-") as tmp_s:
        tmp = Path(tmp_s)
        model_dir, eval_file = tmp / "SmolLM2-135M-Instruct", tmp / "eval.txt"
        model_dir.mkdir()
        torch_version = run_child(__file__, "prepare", str(model_dir), str(eval_file), *flags)["torch"]
        sweep = run_child(__file__, "sweep", str(model_dir), str(tmp / "sweep"), str(eval_file), *flags)
        if args.keep is not None:
            shutil.copytree(tmp / "sweep", args.keep, dirs_exist_ok=True)
        naive = [
            run_child(__file__, "naive", str(model_dir), str(tmp / f"naive-{i}"), str(eval_file), str(alpha), *flags)
            for i, alpha in enumerate(ALPHAS)
        ]

    naive_wall = sum(r["wall_s"] for r in naive)
    naive_convert = sum(r["convert_s"] for r in naive)
    print(
        f"SmolLM2-135M-Instruct float32, k in {', '.join(f'{a:g}' for a in ALPHAS)}, {args.eval_prompts} eval prompts "
        f"+ {naive[0]['prompts'] - args.eval_prompts} held-out, {args.max_new_tokens} tokens, {os.cpu_count()} CPUs, "
        f"torch {torch_version}"
    )
    print(f"{'':44}{'wall s':>10}{'runs':>6}")
    print(f"{'naive: convert + reload + unbatched, per k':44}{naive_wall:>10.1f}{len(naive):>6}")
    print(f"{'  of which convert':44}{naive_convert:>10.1f}")
    print(f"{'bakesteer sweep (broadcast and last-token)':44}{sweep['wall_s']:>10.1f}{sweep['runs']:>6}")
    print(f"sweep / naive wall time: {sweep['wall_s'] / naive_wall:.2f}x (for twice the runs, with every metric)")


if __name__ == "__main__":
    main()
