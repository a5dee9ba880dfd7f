"""Benchmark: generation throughput of a baked SmolLM2-135M-Instruct against its base, in the same run.

Three models generate the same greedy completions (left-padded batches, KV cache, ``min_new_tokens`` so every run
decodes the same number of tokens): the base, the baked checkpoint loaded with plain transformers, and the base with
bakesteer's steering hooks (what a user without a bake runs). A baked model's only extra work is three bias adds per
steered block, so it should be within 2% of the base; hooks add a Python call per block per step.

Each model runs in a fresh process; the three alternate for ``--repeats`` rounds and the best round counts.

    python benchmarks/generation.py [--prompts 32] [--tokens 64] [--batch-size 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

from children import prepare_smollm2, run_child  # benchmarks/ is the script directory: first on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
KINDS = ("base", "baked", "hooked")


def child_prepare(model_dir: Path, baked_dir: Path) -> dict[str, object]:
    """Not timed: the float32 SmolLM2 copy and its bake at k = 1 (default band and prompt sets)."""
    from bakesteer import ConvertOptions, convert
    from bakesteer.progress import set_progress_bars

    set_progress_bars(False)
    info = prepare_smollm2(model_dir)
    convert(str(model_dir), baked_dir, ConvertOptions(alpha=1.0))
    return info


def child_generate(kind: str, model_dir: Path, baked_dir: Path, prompts: int, tokens: int, batch: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bakesteer.architectures import spec_for
    from bakesteer.batching import left_padded_batches, pad_token_id
    from bakesteer.hooks import steering
    from bakesteer.prompts import load_prompt_set, render_prompts
    from bakesteer.vector import SteeringVector

    directory = baked_dir if kind == "baked" else model_dir
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    ids = render_prompts(tok, list(load_prompt_set(None, "eval").prompts[:prompts]), chat_template=True)
    pad = pad_token_id(tok)
    offsets = None
    if kind == "hooked":
        meta = json.loads((baked_dir / "bakesteer.json").read_text())
        band = (meta["method"]["band"]["start"], meta["method"]["band"]["end_exclusive"])
        offsets = SteeringVector.load(baked_dir / "steering.safetensors").offsets(band, meta["method"]["k"])

    def run() -> int:
        out = 0
        for b in left_padded_batches(ids, batch, pad):
            generated = model.generate(
                input_ids=b.input_ids,
                attention_mask=b.attention_mask,
                do_sample=False,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                pad_token_id=pad,
            )
            out += (generated.shape[1] - b.input_ids.shape[1]) * generated.shape[0]
        return out

    spec = spec_for(model.config, allow_remote_code=True)
    hooks = steering(model, spec, offsets) if offsets is not None else contextlib.nullcontext()
    with torch.no_grad(), hooks:
        start = time.perf_counter()
        count = run()
        wall = time.perf_counter() - start
    return {"tokens": count, "wall_s": wall, "tok_per_s": count / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "prepare":
            print(json.dumps(child_prepare(Path(rest[0]), Path(rest[1]))))
        else:
            result = child_generate(kind, Path(rest[0]), Path(rest[1]), args.prompts, args.tokens, args.batch_size)
            print(json.dumps(result))
        return

    sizes = ["--prompts", str(args.prompts), "--tokens", str(args.tokens), "--batch-size", str(args.batch_size)]
    with tempfile.TemporaryDirectory(prefix="bakesteer-bench-") as tmp_s:
        model_dir, baked_dir = Path(tmp_s) / "SmolLM2-135M-Instruct", Path(tmp_s) / "baked"
        torch_version = run_child(__file__, "prepare", str(model_dir), str(baked_dir))["torch"]
        runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        for _ in range(args.repeats):
            for kind in KINDS:  # alternating, so drift hits all three alike
                runs[kind].append(run_child(__file__, kind, str(model_dir), str(baked_dir), *sizes))
    best = {kind: max(r, key=lambda x: x["tok_per_s"]) for kind, r in runs.items()}
    print(
        f"SmolLM2-135M-Instruct float32, {args.prompts} prompts x {args.tokens} tokens, batch {args.batch_size}, "
        f"best of {args.repeats}, {os.cpu_count()} CPUs, torch {torch_version}"
    )
    print(f"{'':28}{'tokens/s':>10}{'vs base':>9}   all rounds (tokens/s)")
    labels = {"base": "base", "baked": "baked (plain transformers)", "hooked": "base + steering hooks"}
    for kind in KINDS:
        rounds = ", ".join(f"{r['tok_per_s']:.1f}" for r in runs[kind])
        ratio = best[kind]["tok_per_s"] / best["base"]["tok_per_s"]
        print(f"{labels[kind]:28}{best[kind]['tok_per_s']:>10.1f}{ratio:>8.3f}x   {rounds}")


if __name__ == "__main__":
    main()
