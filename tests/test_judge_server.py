"""Slow tier: a real OpenAI-compatible server as the judge. llama-cpp-python's own server (``python -m
llama_cpp.server``, its ``server`` extra), started here on 127.0.0.1, serves SmolLM2-135M-Instruct and judges a
SmolLM2 sweep of the sentiment pair with the ``concept`` rubric; its scores are compared with VADER's across k.

The server serves an F16 GGUF made from the shipped Q4_1 file by bakesteer itself (``convert --alpha 0``, which
writes zero biases, then ``export --gguf``): llama.cpp 0.3.36's CPU backend crashes (SIGSEGV) on the first
completion of the Q4_1 file on CPUs with AMX (measured on an Intel Xeon with AMX_INT8), and F16 runs everywhere.
``BAKESTEER_JUDGE_GGUF`` serves another GGUF instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bakesteer.cli import main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def judge_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("BAKESTEER_JUDGE_GGUF"):
        return Path(os.environ["BAKESTEER_JUDGE_GGUF"])
    from judge import f16_smollm2  # benchmarks/judge.py

    return f16_smollm2(tmp_path_factory.mktemp("judge"))


def _spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (ties share their mean rank); NaN when either series is constant."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def test_llama_cpp_server_judges_a_smollm2_sentiment_sweep(
    judge_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: object
) -> None:
    from judge import start_server  # benchmarks/judge.py
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from bakesteer.demo import smollm2_gguf

    monkeypatch.setenv("BAKESTEER_CACHE", str(tmp_path / "cache"))
    data = ROOT / "bakesteer" / "data"
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text("\n".join((data / "eval_prompts.txt").read_text().splitlines()[:16]) + "\n")
    server, url = start_server(judge_gguf, None)
    try:
        out = tmp_path / "sweep"
        args = ["sweep", str(smollm2_gguf()), "-o", str(out), "--alphas=-1,-0.5,0,0.5,1", "--modes", "broadcast"]
        args += ["--positive", str(data / "joyful.txt"), "--negative", str(data / "gloomy.txt")]
        args += ["--eval-prompts", str(eval_file), "--max-new-tokens", "40", "--long-prompts", "2"]
        args += ["--long-tokens", "128", "--judge", url, "--rubric", "concept", "--concept", "joy and enthusiasm"]
        args += ["--baseline-prompt", "Answer in a joyful, enthusiastic tone.", "-q"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    finally:
        server.terminate()
        server.wait(30)
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["judge"]["kind"] == "server" and sweep["judge"]["model"] == "judge"
    vader = SentimentIntensityAnalyzer()
    judged, lexicon = [], []
    for run in sweep["runs"]:
        evals = [s for s in run["samples"] if s["set"] == "eval"]
        assert len(evals) == 16
        # every sample was judged, or counted as unparseable: none is missing and none failed
        verdicts = [s["judge"] for s in evals]
        assert all(v["error"] is None and isinstance(v["reply"], str) for v in verdicts)
        m = run["metrics"]["judge"]
        assert m["judged"] + m["unparseable"] == 16 and m["failed"] == 0
        assert m["judged"] == sum(1 for v in verdicts if v["verdict"] is not None)
        if run["mode"] == "broadcast" and m["concept"]["eval"] is not None:
            judged.append(m["concept"]["eval"])
            lexicon.append(sum(vader.polarity_scores(s["completion"])["compound"] for s in evals) / len(evals))
    rho = _spearman(judged, lexicon) if len(judged) > 2 else float("nan")
    record_property("judge_vs_vader_spearman", rho)
    record_property("judged_concept_by_k", judged)
    print(f"judge concept rating vs VADER across k: Spearman {rho:.2f} ({judged} vs {lexicon})")
    assert [r["mode"] for r in sweep["runs"]][-1] == "prompted"
