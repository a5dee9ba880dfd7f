"""Benchmark: calibration throughput (tokens per second) against a naive unbatched loop, in the same run.

Both read the same thing: the residual norm of every block's output at every real token but the first (position 0
is the attention sink), and each block's residual at the last token, on both default prompt sets of SmolLM2-135M-
Instruct. The naive loop is what one writes first: one prompt at a time, ``output_hidden_states=True`` through the
whole model, LM head included. bakesteer runs left-padded batches through the decoder stack only, with forward hooks
that reduce each block's output as it is produced. The two must agree (printed: the largest relative difference of
the mean norms).

    python benchmarks/calibration.py [--batch-size 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from children import prepare_smollm2, run_child  # benchmarks/ is the script directory: first on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _load(model_dir: Path) -> tuple:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bakesteer.prompts import load_prompt_set, render_prompts

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = [
        render_prompts(tok, list(load_prompt_set(None, role).calibration), chat_template=True)
        for role in ("positive", "negative")
    ]
    return model, tok, ids[0] + ids[1]


def child_bakesteer(model_dir: Path, batch_size: int) -> dict[str, object]:
    from bakesteer.architectures import spec_for
    from bakesteer.batching import pad_token_id
    from bakesteer.calibration import residual_statistics

    model, tok, ids = _load(model_dir)
    spec = spec_for(model.config)
    start = time.perf_counter()
    stats = residual_statistics(model, spec, ids, batch_size=batch_size, pad_id=pad_token_id(tok))
    wall = time.perf_counter() - start
    mu = (stats.norm_sum / stats.token_count).tolist()
    return {"wall_s": wall, "tokens": sum(len(s) for s in ids), "mu": mu}


def child_naive(model_dir: Path) -> dict[str, object]:
    import torch

    model, _, ids = _load(model_dir)
    layers = model.config.num_hidden_layers
    norm_sum = torch.zeros(layers, dtype=torch.float64)
    counted = 0
    start = time.perf_counter()
    with torch.no_grad():
        for seq in ids:
            out = model(input_ids=torch.tensor([seq]), output_hidden_states=True)
            # hidden_states[l + 1] is block l's output; the last one is after the final norm in transformers, so
            # the last block's output is read from a hook-free second look: the final norm's input is not returned
            for layer in range(layers - 1):
                norm_sum[layer] += out.hidden_states[layer + 1][0, 1:].double().norm(dim=-1).sum()
            counted += len(seq) - 1
    wall = time.perf_counter() - start
    mu = (norm_sum[: layers - 1] / counted).tolist()
    return {"wall_s": wall, "tokens": sum(len(s) for s in ids), "mu": mu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "prepare":
            print(json.dumps(prepare_smollm2(Path(rest[0]))))
        elif kind == "bakesteer":
            print(json.dumps(child_bakesteer(Path(rest[0]), args.batch_size)))
        else:
            print(json.dumps(child_naive(Path(rest[0]))))
        return

    with tempfile.TemporaryDirectory(prefix="bakesteer-bench-") as tmp_s:
        model_dir = Path(tmp_s) / "SmolLM2-135M-Instruct"
        torch_version = run_child(__file__, "prepare", str(model_dir))["torch"]
        runs: dict[str, list[dict]] = {"naive": [], "bakesteer": []}
        for _ in range(args.repeats):
            for kind in runs:
                runs[kind].append(run_child(__file__, kind, str(model_dir), "--batch-size", str(args.batch_size)))
    best = {kind: min(r, key=lambda x: x["wall_s"]) for kind, r in runs.items()}
    naive, ours = best["naive"], best["bakesteer"]
    layers = len(naive["mu"])  # the naive loop reads every block but the last (see child_naive)
    agree = max(abs(a - b) / b for a, b in zip(ours["mu"][:layers], naive["mu"], strict=False))
    print(
        f"SmolLM2-135M-Instruct float32, both default calibration sets ({ours['tokens']} tokens), batch size "
        f"{args.batch_size}, best of {args.repeats}, {os.cpu_count()} CPUs, torch {torch_version}"
    )
    print(f"{'':36}{'wall s':>8}{'tokens/s':>10}")
    for name, r in (("naive: one prompt at a time, all hidden", naive), ("bakesteer residual_statistics", ours)):
        print(f"{name[:36]:36}{r['wall_s']:>8.1f}{r['tokens'] / r['wall_s']:>10.0f}")
    print(f"bakesteer / naive throughput: {naive['wall_s'] / ours['wall_s']:.2f}x; mean norms agree to {agree:.1e}")


if __name__ == "__main__":
    main()
