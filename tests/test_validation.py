"""The validator catches real broken checkpoints (written by the real writer, reloaded by plain transformers)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

from bakesteer.architectures import REGISTRY
from bakesteer.bake import bias_plan
from bakesteer.errors import ValidationError
from bakesteer.loading import calibrate
from bakesteer.options import ConvertOptions
from bakesteer.placement import Placement
from bakesteer.prompts import load_prompt_set, render_prompts
from bakesteer.source import find_weights
from bakesteer.validation import FP32_TOLERANCE, reference_outputs, validate_checkpoint
from bakesteer.writer import write_weights

SPEC = REGISTRY["llama"]
IO = {"batch_size": 4, "pad_id": 0, "greedy_tokens": 8}


@pytest.fixture(scope="module")
def setup(llama_sharded_dir: Path, prompt_files):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(llama_sharded_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(llama_sharded_dir)
    pos, neg = load_prompt_set(prompt_files[0], "positive"), load_prompt_set(prompt_files[1], "negative")
    vector = calibrate(model, tok, SPEC, pos, neg, ConvertOptions())
    probes = render_prompts(tok, pos.heldout[:2] + neg.heldout[:2], chat_template=True)
    return model, vector, probes


def _write(src: Path, model, offsets: torch.Tensor, out: Path, *, set_flag: bool = True) -> set[str]:
    plan = bias_plan(model, SPEC, offsets)
    out.mkdir()
    files, index = find_weights(src, "src")
    write_weights(src, files, index, plan, out, torch.float32)
    config = copy.deepcopy(model.config)
    if set_flag:
        for key, value in plan.config_updates.items():
            setattr(config, key, value)
    config.save_pretrained(out)
    return plan.keys()


def _check(out: Path, reference, probes, keys, alpha: float = 1.0):
    return validate_checkpoint(
        out, reference, expected_keys=keys, alpha=alpha, placement=Placement(torch.device("cpu")), **IO
    )


def test_correct_bake_passes(setup, llama_sharded_dir: Path, tmp_path: Path) -> None:
    model, vector, probes = setup
    offsets = vector.offsets((2, 5), 1.0)
    reference = reference_outputs(model, SPEC, offsets, probes, **IO)
    keys = _write(llama_sharded_dir, model, offsets, tmp_path / "ok")
    report = _check(tmp_path / "ok", reference, probes, keys)
    assert report.passed and report.relative_diff < 1e-5 and report.greedy_equal
    assert report.mean_kl < 1e-9 and report.base_relative_diff > 1e-2
    # the first two probes are compared with the hooked model's greedy continuation appended
    assert report.positions == sum(len(p) for p in probes) + 2 * IO["greedy_tokens"]


def test_wrong_offsets_fail_on_logits(setup, llama_sharded_dir: Path, tmp_path: Path) -> None:
    model, vector, probes = setup
    offsets = vector.offsets((2, 5), 1.0)
    reference = reference_outputs(model, SPEC, offsets, probes, **IO)
    keys = _write(llama_sharded_dir, model, 1.01 * offsets, tmp_path / "bad")  # 1% too strong
    with pytest.raises(ValidationError) as info:
        _check(tmp_path / "bad", reference, probes, keys)
    err = info.value
    assert err.check == "logits"
    assert err.report["relative_diff"] > 1e-4
    # the numbers it compared travel as attributes, and the message prints them
    assert (
        (err.measured, err.bound)
        == (err.report["relative_diff"], err.report["tolerance"])
        == (
            err.measured,
            FP32_TOLERANCE,
        )
    )
    assert f"{err.measured:.3g} of max|logit|, above the tolerance {err.bound:.3g}" in str(err)
    assert not isinstance(err, AssertionError)  # `python -O` cannot strip it, and pytest does not mistake it


def test_ignored_flag_fails_on_keys(setup, llama_sharded_dir: Path, tmp_path: Path) -> None:
    # like MistralConfig(mlp_bias=True): the biases are in the files but the model does not read them
    model, vector, probes = setup
    offsets = vector.offsets((2, 5), 1.0)
    reference = reference_outputs(model, SPEC, offsets, probes, **IO)
    keys = _write(llama_sharded_dir, model, offsets, tmp_path / "noflag", set_flag=False)
    with pytest.raises(ValidationError) as info:
        _check(tmp_path / "noflag", reference, probes, keys)
    assert info.value.check == "keys" and info.value.report["unexpected_keys"]


def test_leftover_single_file_beside_index_is_caught(setup, llama_sharded_dir: Path, tmp_path: Path) -> None:
    # transformers prefers model.safetensors over an index: a stale one hides every baked bias
    model, vector, probes = setup
    offsets = vector.offsets((2, 5), 1.0)
    reference = reference_outputs(model, SPEC, offsets, probes, **IO)
    keys = _write(llama_sharded_dir, model, offsets, tmp_path / "stale")
    model.save_pretrained(tmp_path / "single")
    shutil.copy(tmp_path / "single" / "model.safetensors", tmp_path / "stale" / "model.safetensors")
    with pytest.raises(ValidationError) as info:
        _check(tmp_path / "stale", reference, probes, keys)
    assert info.value.check in ("keys", "bias")


def test_unmeasurable_steering_is_a_no_op(setup, llama_sharded_dir: Path, tmp_path: Path) -> None:
    model, vector, probes = setup
    offsets = vector.offsets((2, 5), 1e-7)
    reference = reference_outputs(model, SPEC, offsets, probes, **IO)
    keys = _write(llama_sharded_dir, model, offsets, tmp_path / "tiny")
    with pytest.raises(ValidationError, match="too weak to verify") as info:
        _check(tmp_path / "tiny", reference, probes, keys, alpha=1e-7)
    assert info.value.check == "no-op"


def test_validation_error_in_the_cli_is_one_line(setup) -> None:
    err = ValidationError("logits", "max|logit diff| is 0.5 of max|logit|", report={"relative_diff": 0.5})
    assert err.exit_code == 3
    assert "\n" not in err.one_line() and "nothing was written" in err.one_line()


def test_greedy_continuation_is_the_argmax_and_teacher_forcing_reads_it(setup) -> None:
    """The KV-cache decoding equals the argmax of one uncached pass over probe + continuation; the same reading of
    another model (here: the unsteered base) finds the difference."""
    from bakesteer.hooks import steering
    from bakesteer.validation import greedy_agreement, greedy_continuations

    model, vector, probes = setup
    offsets = vector.offsets((2, 5), 3.0)
    with torch.no_grad(), steering(model, SPEC, offsets):
        greedy = greedy_continuations(model, probes[:2], pad_id=0, tokens=12)
        assert [len(g) for g in greedy] == [12, 12]
        for probe, continuation in zip(probes, greedy, strict=False):
            rows = model(input_ids=torch.tensor([probe + continuation])).logits[0]
            assert greedy_agreement(rows, len(probe), continuation) == continuation
    with torch.no_grad():
        base = [
            greedy_agreement(model(input_ids=torch.tensor([p + g])).logits[0], len(p), g)
            for p, g in zip(probes, greedy, strict=False)
        ]
    assert base != greedy
