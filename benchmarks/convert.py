"""Benchmark: `bakesteer convert` on SmolLM2-135M-Instruct against a same-run baseline.

The baseline is the least any tool must do to produce a calibrated checkpoint: load the model, run the same
calibration forward passes (both default prompt sets, same batch size) and `save_pretrained`. bakesteer does that
plus the reference passes, writing, and a full reload-and-compare validation.

Each measurement runs in its own process, so peak RSS (ru_maxrss) is that run's alone. Memory is reported above an
"import floor" (a process that only imports torch, transformers and bakesteer), relative to the weights' size.

    python benchmarks/convert.py [--repeats 3] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from children import run_child  # benchmarks/ is the script directory: first on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _peak_mib() -> float:
    # VmHWM belongs to this address space (reset by exec); ru_maxrss can carry the parent's peak across fork+exec.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_prepare(model_dir: Path) -> dict[str, object]:
    """Not timed: a plain float32 safetensors copy of SmolLM2, the usual kind of source."""
    import torch

    from bakesteer.demo import smollm2_gguf
    from bakesteer.dequantize import materialize_gguf
    from bakesteer.source import resolve_source

    materialize_gguf(resolve_source(str(smollm2_gguf())), torch.float32, model_dir)
    return {"torch": torch.__version__}


def child_floor() -> dict[str, float]:
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import bakesteer.pipeline  # noqa: F401

    return {"wall_s": 0.0, "peak_mib": _peak_mib()}


def child_baseline(model_dir: Path, out: Path, batch_size: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bakesteer.batching import left_padded_batches, pad_token_id
    from bakesteer.prompts import load_prompt_set, render_prompts

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        for role in ("positive", "negative"):
            ids = render_prompts(tok, load_prompt_set(None, role).calibration, chat_template=True)
            for batch in left_padded_batches(ids, batch_size, pad_token_id(tok)):
                model.model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"wall_s": time.perf_counter() - start, "peak_mib": _peak_mib()}


def child_convert(model_dir: Path, out: Path, batch_size: int) -> dict[str, float]:
    from bakesteer import ConvertOptions, convert
    from bakesteer.progress import set_progress_bars

    set_progress_bars(False)
    start = time.perf_counter()
    result = convert(str(model_dir), out, ConvertOptions(alpha=1.0, batch_size=batch_size))
    wall = time.perf_counter() - start
    return {"wall_s": wall, "peak_mib": _peak_mib(), "stages": result.timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "floor":
            print(json.dumps(child_floor()))
        elif kind == "prepare":
            print(json.dumps(child_prepare(Path(rest[0]))))
        else:
            fn = child_baseline if kind == "baseline" else child_convert
            print(json.dumps(fn(Path(rest[0]), Path(rest[1]), args.batch_size)))
        return

    # The parent imports nothing heavy: every measurement is a fresh process.
    with tempfile.TemporaryDirectory(prefix="bakesteer-bench-") as tmp_s:
        tmp = Path(tmp_s)
        model_dir = tmp / "SmolLM2-135M-Instruct"
        model_dir.mkdir()
        torch_version = run_child(__file__, "prepare", str(model_dir))["torch"]
        weights_mib = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 2**20

        floor = run_child(__file__, "floor")["peak_mib"]
        runs: dict[str, list[dict]] = {"baseline": [], "convert": []}
        for _ in range(args.repeats):
            for kind in ("baseline", "convert"):  # interleaved, so drift hits both alike
                out = tmp / f"out-{kind}"
                shutil.rmtree(out, ignore_errors=True)
                runs[kind].append(
                    run_child(__file__, kind, str(model_dir), str(out), "--batch-size", str(args.batch_size))
                )
        best = {kind: min(r, key=lambda x: x["wall_s"]) for kind, r in runs.items()}

    b, c = best["baseline"], best["convert"]
    print(
        f"SmolLM2-135M-Instruct float32, weights {weights_mib:.0f} MiB, batch size {args.batch_size}, "
        f"best of {args.repeats}, {os.cpu_count()} CPUs, torch {torch_version}"
    )
    print(f"{'':24}{'wall s':>10}{'peak MiB':>10}{'above floor':>13}{'/ weights':>11}")
    print(f"{'import floor':24}{'':>10}{floor:>10.0f}")
    for name, r in (("baseline", b), ("bakesteer convert", c)):
        above = r["peak_mib"] - floor
        print(f"{name:24}{r['wall_s']:>10.1f}{r['peak_mib']:>10.0f}{above:>13.0f}{above / weights_mib:>11.2f}")
    print(f"convert / baseline wall time: {c['wall_s'] / b['wall_s']:.2f}x")
    print(
        f"convert peak above floor / weights: {(c['peak_mib'] - floor) / weights_mib:.2f}x "
        f"(baseline {(b['peak_mib'] - floor) / weights_mib:.2f}x)"
    )
    print("convert stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in c["stages"].items()))


if __name__ == "__main__":
    main()
