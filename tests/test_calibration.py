"""mu, c and the offsets against an independent, unbatched computation written here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bakesteer.architectures import REGISTRY
from bakesteer.loading import calibrate
from bakesteer.options import ConvertOptions
from bakesteer.prompts import load_prompt_set


def _load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    return model, tok


@torch.no_grad()
def independent_statistics(model, tok, prompts: tuple[str, ...]) -> tuple[list[list[float]], torch.Tensor]:
    """Per layer: every counted token's residual norm, and the mean last-token residual, one prompt at a time.

    Residuals come from ``output_hidden_states`` (``hidden_states[l + 1]`` is block l's output) except for the last
    block, whose output is read as the input of the final norm (``hidden_states[-1]`` is after that norm).
    """
    layers = model.config.num_hidden_layers
    norms: list[list[float]] = [[] for _ in range(layers)]
    last = torch.zeros(layers, model.config.hidden_size, dtype=torch.float64)
    captured = {}
    handle = model.model.norm.register_forward_pre_hook(lambda mod, args: captured.__setitem__("x", args[0]))
    try:
        for prompt in prompts:
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            out = model(input_ids=ids, output_hidden_states=True)
            residuals = [out.hidden_states[i + 1][0] for i in range(layers - 1)] + [captured["x"][0]]
            for layer, r in enumerate(residuals):
                norms[layer] += r[1:].double().norm(dim=-1).tolist()  # position 0 (attention sink) excluded
                last[layer] += r[-1].double()
    finally:
        handle.remove()
    return norms, last / len(prompts)


@pytest.fixture(scope="module")
def expected(llama_dir: Path, prompt_files):
    model, tok = _load(llama_dir)
    pos = load_prompt_set(prompt_files[0], "positive")
    neg = load_prompt_set(prompt_files[1], "negative")
    pos_norms, pos_last = independent_statistics(model, tok, pos.calibration)
    neg_norms, neg_last = independent_statistics(model, tok, neg.calibration)
    mu = torch.tensor([sum(a + b) / len(a + b) for a, b in zip(pos_norms, neg_norms, strict=True)], dtype=torch.float64)
    diff = pos_last - neg_last
    c = diff / diff.norm(dim=-1, keepdim=True)
    return {"mu": mu, "c": c, "model": model, "tok": tok, "pos": pos, "neg": neg}


def _vector(expected, batch_size: int):
    opts = ConvertOptions(batch_size=batch_size)
    return calibrate(expected["model"], expected["tok"], REGISTRY["llama"], expected["pos"], expected["neg"], opts)


def test_mu_and_directions_match_independent_computation(expected) -> None:
    vec = _vector(expected, batch_size=4)
    torch.testing.assert_close(vec.mu.double(), expected["mu"], rtol=2e-6, atol=0)
    torch.testing.assert_close(vec.directions.double(), expected["c"], rtol=0, atol=2e-6)
    assert torch.allclose(vec.directions.norm(dim=-1), torch.ones(vec.num_layers))
    # the attention sink matters: counting position 0 would change mu noticeably
    assert vec.info["tokens_counted"] > 0


def test_offsets_formula(expected) -> None:
    vec = _vector(expected, batch_size=4)
    band, k, d = (2, 5), 1.7, 64
    offsets = vec.offsets(band, k)
    for layer in range(5):
        want = k * expected["mu"][layer] / math.sqrt(d) * expected["c"][layer] if 2 <= layer < 5 else torch.zeros(d)
        torch.testing.assert_close(
            offsets[layer].double(), want.double(), rtol=0, atol=5e-6 * float(want.abs().max() + 1)
        )
        if 2 <= layer < 5:
            # the injection has the same relative size k / sqrt(d) at every layer
            assert float(offsets[layer].norm()) / float(expected["mu"][layer]) == pytest.approx(k / 8, rel=1e-6)
    torch.testing.assert_close(vec.offsets(band, -k), -offsets)  # negative k flips the offsets
    assert not vec.offsets(band, 0.0).any()


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_batch_size_invariance(expected, batch_size: int) -> None:
    reference = _vector(expected, batch_size=5)
    other = _vector(expected, batch_size=batch_size)
    torch.testing.assert_close(other.mu, reference.mu, rtol=1e-6, atol=0)
    torch.testing.assert_close(other.directions, reference.directions, rtol=0, atol=1e-6)
    assert other.info["tokens_counted"] == reference.info["tokens_counted"]


def test_identical_sets_are_refused(expected) -> None:
    from bakesteer.errors import DirectionError

    opts = ConvertOptions()
    vec = calibrate(expected["model"], expected["tok"], REGISTRY["llama"], expected["pos"], expected["pos"], opts)
    with pytest.raises(DirectionError, match="degenerate") as info:
        vec.offsets((2, 5), 1.0)
    assert info.value.layer == 2


def test_hooks_are_removed_even_on_error(expected) -> None:
    from bakesteer.hooks import steering

    model = expected["model"]
    offsets = torch.ones(5, 64)
    before = [len(layer._forward_hooks) for layer in model.model.layers]
    with pytest.raises(RuntimeError, match="boom"), steering(model, REGISTRY["llama"], offsets):
        assert [len(layer._forward_hooks) for layer in model.model.layers] == [n + 1 for n in before]
        raise RuntimeError("boom")
    assert [len(layer._forward_hooks) for layer in model.model.layers] == before
