"""Benchmark: `bakesteer publish` of one model x three alphas against a same-run baseline.

The baseline is what a CI script without `publish` does: for each alpha, `bakesteer convert --push-to-hub` (each
conversion calibrates again). `publish` calibrates once and reuses the vector; its rerun, with nothing changed,
should cost only the fingerprint checks. Pushes go to the loopback Hub-compatible server of the test suite, through
the real huggingface_hub client.

    python benchmarks/publish.py [--alphas -1,1,2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from hub_server import TOKEN, HubServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", default="-1,1,2", help="comma-separated k values")
    args = parser.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]

    with HubServer() as hub, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the client reads these at import: set them first
        os.environ.update(
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_DISABLE_XET="1",
            HF_TOKEN=TOKEN,
            HF_HUB_OFFLINE="0",
            HF_HUB_CACHE=str(work / "cache"),
        )
        from convert import child_prepare

        from bakesteer import ConvertOptions, convert
        from bakesteer.progress import set_progress_bars
        from bakesteer.publish import publish

        set_progress_bars(False)
        model = work / "SmolLM2-135M-Instruct"
        model.mkdir()
        info = child_prepare(model)

        start = time.perf_counter()
        for k in alphas:
            convert(str(model), work / f"loop-{k:g}", ConvertOptions(alpha=k, push_to_hub=f"bench/loop-k{k:g}"))
        loop = time.perf_counter() - start
        loop_commits = hub.state.commit_count

        variants = work / "variants.toml"
        ks = ", ".join(f"{k:g}" for k in alphas)
        variants.write_text(f'[[models]]\nmodel = "{model}"\nalphas = [{ks}]\nrepo = "bench/publish-k{{alpha}}"\n')
        start = time.perf_counter()
        first = publish(variants)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        again = publish(variants)
        again_s = time.perf_counter() - start

    assert not first.failed and not again.failed, [o.error for o in first.failed + again.failed]
    assert again.counts() == {"up-to-date": len(alphas)} and again.calibrations == 0
    print(f"SmolLM2-135M-Instruct float32 x {len(alphas)} alphas ({ks}), {os.cpu_count()} CPUs, torch {info['torch']}")
    print(f"{'':34}{'wall s':>8}{'calibrations':>14}{'commits':>9}")
    print(f"{'baseline: convert --push-to-hub':34}{loop:8.1f}{len(alphas):14d}{loop_commits:9d}")
    print(f"{'publish':34}{first_s:8.1f}{first.calibrations:14d}{first.counts().get('published', 0):9d}")
    print(f"{'publish again (nothing changed)':34}{again_s:8.1f}{again.calibrations:14d}{0:9d}")
    print(f"publish / baseline wall time: {first_s / loop:.2f}x")
    print(f"rerun / publish wall time: {again_s / first_s:.4f}x")


if __name__ == "__main__":
    main()
