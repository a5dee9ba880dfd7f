"""Benchmark: `bakesteer convert` against a same-run baseline, on SmolLM2-135M-Instruct and a random ~1B Llama.

The baseline is the least any tool must do to produce a calibrated checkpoint: load the model, run the same
calibration forward passes (the same prompts, same batch size) and `save_pretrained`. bakesteer does that plus the
reference passes, writing, and a full reload-and-compare validation.

Two sources: SmolLM2-135M-Instruct as float32 safetensors in one `model.safetensors` (as on the Hub), and a randomly
initialised Llama of about 1.2B parameters shaped like Llama-3.2-1B (2048 wide, 16 layers, 128k vocabulary), saved
in bf16 in 5 shards. Each measurement runs in its own process, so peak RSS is that run's alone; memory is reported
above an "import floor" (a process that only imports torch, transformers and bakesteer), relative to the weights'
size. "New bytes" are the output's bytes that are not hard links to the source.

    python benchmarks/convert.py [--models smollm2,llama1b] [--repeats 1] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from children import peak_mib, prepare_smollm2, run_child  # benchmarks/ is the script directory: first on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: The 1B model's calibration: the first prompts of each default set (its forward passes cost ~9x SmolLM2's).
LLAMA1B_PROMPTS = 48


def child_prepare(name: str, model_dir: Path, prompts_dir: Path) -> dict[str, object]:
    """Not timed: the source checkpoint, and the prompt files both sides calibrate on."""
    import torch

    from bakesteer.prompts import load_prompt_set

    count = None
    if name == "smollm2":
        info = prepare_smollm2(model_dir)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from fixtures import make_tokenizer  # the tests' small byte-level BPE: no tokenizer download

        config = LlamaConfig(
            vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096, tie_word_embeddings=True,
            rope_theta=500000.0,
        )  # fmt: skip
        torch.manual_seed(0)
        with torch.device("cpu"):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(model_dir, max_shard_size="500MB")
        del model
        make_tokenizer(model_dir, vocab_size=config.vocab_size, chat_template=True)
        info = {"torch": torch.__version__}
        count = LLAMA1B_PROMPTS
    prompts_dir.mkdir(parents=True, exist_ok=True)
    for role in ("positive", "negative"):
        prompts = load_prompt_set(None, role).prompts[:count]
        (prompts_dir / f"{role}.txt").write_text("\n".join(prompts) + "\n")
    return info


def child_floor() -> dict[str, float]:
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import bakesteer.pipeline  # noqa: F401

    return {"wall_s": 0.0, "peak_mib": peak_mib()}


def child_baseline(model_dir: Path, out: Path, prompts_dir: Path, batch_size: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bakesteer.batching import left_padded_batches, pad_token_id
    from bakesteer.prompts import load_prompt_set, render_prompts
    from bakesteer.source import checkpoint_dtype, resolve_source

    start = time.perf_counter()
    dtype = checkpoint_dtype(resolve_source(str(model_dir)))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        for role in ("positive", "negative"):
            prompts = load_prompt_set(prompts_dir / f"{role}.txt", role).calibration
            ids = render_prompts(tok, prompts, chat_template=True)
            for batch in left_padded_batches(ids, batch_size, pad_token_id(tok)):
                model.model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"wall_s": time.perf_counter() - start, "peak_mib": peak_mib()}


def child_convert(model_dir: Path, out: Path, prompts_dir: Path, batch_size: int) -> dict[str, object]:
    from bakesteer import ConvertOptions, convert
    from bakesteer.progress import set_progress_bars

    set_progress_bars(False)
    options = ConvertOptions(
        alpha=1.0, batch_size=batch_size, positive=prompts_dir / "positive.txt", negative=prompts_dir / "negative.txt"
    )
    start = time.perf_counter()
    result = convert(str(model_dir), out, options)
    wall = time.perf_counter() - start
    assert result.validation is not None and result.validation.passed
    return {"wall_s": wall, "peak_mib": peak_mib(), "stages": result.timings, "rel": result.validation.relative_diff}


def _new_bytes(output: Path, source: Path) -> tuple[int, int]:
    """Bytes of the output's weight files and of all its files that are not hard links to a source file."""
    inodes = {p.stat().st_ino for p in source.iterdir() if p.is_file()}
    weights = everything = 0
    for path in output.iterdir():
        st = path.stat()
        if st.st_ino in inodes:
            continue
        everything += st.st_size
        if path.name.endswith(".safetensors") and path.name != "steering.safetensors":
            weights += st.st_size
    return weights, everything


NAMES = {"smollm2": "SmolLM2-135M-Instruct", "llama1b": "random Llama 1.2B"}


def _bench(name: str, tmp: Path, args: argparse.Namespace, floor: float) -> None:
    model_dir, prompts_dir = tmp / name, tmp / f"{name}-prompts"
    model_dir.mkdir()
    torch_version = run_child(__file__, "prepare", name, str(model_dir), str(prompts_dir))["torch"]
    weight_files = sorted(model_dir.glob("*.safetensors"))
    weights_mib = sum(f.stat().st_size for f in weight_files) / 2**20
    runs: dict[str, list[dict]] = {"baseline": [], "convert": []}
    new = (0, 0)
    for _ in range(args.repeats):
        for kind in ("baseline", "convert"):  # interleaved, so drift hits both alike
            out = tmp / f"out-{kind}"
            shutil.rmtree(out, ignore_errors=True)
            paths = [str(model_dir), str(out), str(prompts_dir)]
            runs[kind].append(run_child(__file__, kind, *paths, "--batch-size", str(args.batch_size)))
            if kind == "convert":
                new = _new_bytes(out, model_dir)
    shutil.rmtree(tmp / "out-baseline", ignore_errors=True)
    shutil.rmtree(tmp / "out-convert", ignore_errors=True)
    best = {kind: min(r, key=lambda x: x["wall_s"]) for kind, r in runs.items()}
    b, c = best["baseline"], best["convert"]
    dtype = "bfloat16" if name == "llama1b" else "float32"
    print(
        f"\n{NAMES[name]} {dtype}, {len(weight_files)} weight file(s) of {weights_mib:.0f} MiB, batch size "
        f"{args.batch_size}, best of {args.repeats}, {os.cpu_count()} CPUs, torch {torch_version}"
    )
    print(f"{'':24}{'wall s':>10}{'peak MiB':>10}{'above floor':>13}{'/ weights':>11}")
    print(f"{'import floor':24}{'':>10}{floor:>10.0f}")
    for label, r in (("baseline", b), ("bakesteer convert", c)):
        above = r["peak_mib"] - floor
        print(f"{label:24}{r['wall_s']:>10.1f}{r['peak_mib']:>10.0f}{above:>13.0f}{above / weights_mib:>11.2f}")
    print(f"convert / baseline wall time: {c['wall_s'] / b['wall_s']:.2f}x")
    print(f"convert / baseline peak RSS above floor: {(c['peak_mib'] - floor) / (b['peak_mib'] - floor):.2f}x")
    total = weights_mib * 2**20
    print(
        f"new bytes: weights {new[0] / 2**20:.2f} MiB = {100 * new[0] / total:.3f}% of the checkpoint; all files "
        f"{new[1] / 2**20:.2f} MiB = {100 * new[1] / total:.3f}%"
    )
    print("convert stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in c["stages"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,llama1b", help="comma-separated: smollm2, llama1b")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "floor":
            print(json.dumps(child_floor()))
        elif kind == "prepare":
            print(json.dumps(child_prepare(rest[0], Path(rest[1]), Path(rest[2]))))
        else:
            fn = child_baseline if kind == "baseline" else child_convert
            print(json.dumps(fn(Path(rest[0]), Path(rest[1]), Path(rest[2]), args.batch_size)))
        return

    # The parent imports nothing heavy: every measurement is a fresh process.
    floor = run_child(__file__, "floor")["peak_mib"]
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="bakesteer-bench-") as tmp_s:
            _bench(name.strip(), Path(tmp_s), args, floor)


if __name__ == "__main__":
    main()
