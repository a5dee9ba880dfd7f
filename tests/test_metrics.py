"""The metrics against hand computations: KL, perplexity, repetition, refusal markers and log-odds, AUROC."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bakesteer.metrics import (
    REFUSAL_MARKERS,
    auroc,
    first_token_kl,
    is_refusal,
    perplexity,
    refusal_log_odds,
    refusal_rate,
    repetition_counts,
    repetition_rate,
    scaled_projection,
)


def test_kl_of_identical_distributions_is_exactly_zero() -> None:
    logits = torch.randn(5, 384, generator=torch.Generator().manual_seed(0)) * 4
    assert torch.equal(first_token_kl(logits, logits.clone()), torch.zeros(5, dtype=torch.float64))


def test_kl_equals_a_hand_computation() -> None:
    # p = (1/2, 1/2); q = (3/4, 1/4): KL(p || q) = 1/2 ln(2/3) + 1/2 ln(2) = 1/2 ln(4/3)
    p = torch.tensor([[0.0, 0.0]], dtype=torch.float64)  # float64 inputs: ln 3 is not rounded to float32
    q = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    assert first_token_kl(p, q).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-15, abs=0)
    # not symmetric: KL(q || p) = 3/4 ln(3/2) + 1/4 ln(1/2)
    assert first_token_kl(q, p).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-15)
    # shifting every logit of a row by a constant changes nothing (raw logits, normalised in float64)
    assert first_token_kl(p, q + 7.0).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)


def test_perplexity_from_nll() -> None:
    assert perplexity(2 * math.log(4.0), 2) == pytest.approx(4.0, rel=1e-15)
    assert perplexity(0.0, 10) == 1.0
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


@torch.no_grad()
def test_continuation_nll_equals_a_token_by_token_computation(llama_dir: Path) -> None:
    """Batched, left-padded scoring from a start position equals an explicit loop over single sequences."""
    from transformers import AutoModelForCausalLM

    from bakesteer.measure import continuation_nll

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    sequences = [[1, 5, 9, 33, 2, 40, 41], [1, 7, 8], [1, 100, 200, 300, 12]]
    starts = [3, 1, 2]
    expected, count = 0.0, 0
    for seq, start in zip(sequences, starts, strict=True):
        logits = model(input_ids=torch.tensor([seq])).logits[0].double()
        for t in range(start, len(seq)):
            expected -= float(torch.log_softmax(logits[t - 1], dim=-1)[seq[t]])
            count += 1
    total, scored = continuation_nll(model, sequences, starts, batch_size=2, pad_id=0)
    assert scored == count == 4 + 2 + 3
    assert total == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I can\u2019t help with that.", True),  # curly apostrophe
        ("I won\u2019t do it.", True),
        ("**I will not** write that.", True),  # markdown emphasis inside the marker
        ("I  CANNOT\n\tassist.", True),  # case and whitespace
        ("As an AI, I have no opinion.", True),
        ("That would be illegal.", True),
        ("", True),  # an empty completion counts as a refusal
        ("   \n ", True),
        ("Here is a recipe for tomato soup.", False),
        ("I can help: first, preheat the oven.", False),
        ("I canned tomatoes last summer.", False),
    ],
)
def test_refusal_markers(text: str, refusal: bool) -> None:
    assert is_refusal(text) is refusal


def test_refusal_rate_and_marker_list() -> None:
    assert refusal_rate(["Sorry, no.", "Sure! Here it is.", "", "Of course."]) == 0.5
    assert refusal_rate([]) == 0.0
    assert all(m == m.lower() and m.strip() == m for m in REFUSAL_MARKERS)  # matched against lowercased text


def test_refusal_log_odds_equals_a_hand_computation() -> None:
    logits = torch.zeros(2, 4, dtype=torch.float64)  # row 0 uniform: each token 1/4
    logits[1, 0] = math.log(3.0)  # row 1: token 0 has 3/6, the others 1/6 each
    scores = refusal_log_odds(logits, [0, 1])
    assert scores[0].item() == pytest.approx(math.log(0.5 + 1e-8) - math.log(0.5 + 1e-8), abs=1e-15)
    p = 3 / 6 + 1 / 6
    assert scores[1].item() == pytest.approx(math.log(p + 1e-8) - math.log(1 - p + 1e-8), rel=1e-12)


def test_repetition() -> None:
    # 4-grams of 1 2 3 4 1 2 3 4: 1234 2341 3412 4123 1234 -> 5, of which 1 repeats an earlier one
    assert repetition_counts([1, 2, 3, 4, 1, 2, 3, 4]) == (1, 5)
    assert repetition_counts([7, 7, 7, 7, 7, 7]) == (2, 3)
    assert repetition_counts([1, 2, 3]) == (0, 0)
    assert repetition_rate([[1, 2, 3, 4, 1, 2, 3, 4], [7, 7, 7, 7, 7, 7], [1, 2]]) == pytest.approx(3 / 8)
    assert repetition_rate([[1, 2], []]) == 0.0


def test_auroc() -> None:
    assert auroc([3.0, 4.0], [1.0, 2.0]) == 1.0  # separable
    assert auroc([1.0, 2.0], [3.0, 4.0]) == 0.0  # separable, the wrong way round
    assert auroc([1.0, 3.0], [2.0, 2.0]) == 0.5  # inseparable: two wins, two losses
    assert auroc([0.35, 0.8], [0.1, 0.4]) == 0.75  # the classic four-point example
    assert auroc([1.0, 2.0], [2.0]) == 0.25  # a tie counts one half
    assert auroc(torch.zeros(3), torch.zeros(5)) == 0.5
    with pytest.raises(ValueError):
        auroc([], [1.0])


def test_scaled_projection_maps_the_anchors_to_0_and_1() -> None:
    values = torch.tensor([2.0, 6.0, 4.0, 10.0])
    assert scaled_projection(values, 2.0, 6.0).tolist() == [0.0, 1.0, 0.5, 2.0]
    with pytest.raises(ValueError):
        scaled_projection(values, 3.0, 3.0)


def test_prompts_that_cannot_serve_are_typed_errors_with_a_fix() -> None:
    """Bad prompt content reaches the CLI as one named line, not as an "unexpected ValueError"."""
    from bakesteer.calibration import ResidualStatistics, mean_norms
    from bakesteer.errors import PromptContentError
    from bakesteer.metrics import scaled_projection

    empty = ResidualStatistics(torch.zeros(3, dtype=torch.float64), 0, torch.zeros(3, 4, dtype=torch.float64), 5)
    with pytest.raises(PromptContentError, match="no calibration token was counted") as err:
        mean_norms(empty, empty)
    assert err.value.hint == "use prompts of several words" and err.value.exit_code == 2
    with pytest.raises(PromptContentError, match="project to the same value"):
        scaled_projection(torch.tensor([0.5]), 1.0, 1.0)
    assert scaled_projection(torch.tensor([1.0, 3.0]), 1.0, 3.0).tolist() == [0.0, 1.0]
