"""The output's config and tokenizer files: the source's own bytes with only the bake's keys changed, readable alike by
transformers 4 and 5 (issue 17). The readers themselves run in the slow tier (tests/test_readers.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fixtures import LLAMA3_ROPE, as_transformers4_layout, llama_config, save_model

from bakesteer import ConvertOptions, convert
from bakesteer.architectures import REGISTRY, transformers4
from bakesteer.configfiles import (
    edit_json,
    legacy_rope,
    portable_updates,
    reader_mismatches,
    transformers4_reading,
)
from bakesteer.errors import ValidationError
from bakesteer.hooks import steering
from bakesteer.vector import SteeringVector

IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 100, 200, 300, 301, 302, 303, 304, 305, 306, 307]])


def fast(prompt_files, **kw) -> ConvertOptions:
    return ConvertOptions(positive=prompt_files[0], negative=prompt_files[1], **kw)


def _logits(directory: Path, *, offsets=None, spec="llama") -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        if offsets is None:
            return model(IDS).logits
        with steering(model, REGISTRY[spec], offsets):
            return model(IDS).logits


@pytest.fixture(scope="module")
def llama3_source(tmp_path_factory) -> Path:
    """A Llama 3-style source written in transformers 4's layout: rope base 500000, llama3 scaling, bf16 dtype key
    ``torch_dtype`` only (an older transformers 4), ``PreTrainedTokenizerFast``."""
    directory = save_model(llama_config(), tmp_path_factory.mktemp("l3") / "llama3")
    as_transformers4_layout(directory, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE)
    config = json.loads((directory / "config.json").read_text())
    config["torch_dtype"] = config.pop("dtype")
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def test_a_transformers4_source_keeps_its_files_and_only_the_bias_switch_and_dtype_change(
    llama3_source: Path, prompt_files, tmp_path: Path
) -> None:
    out = convert(str(llama3_source), tmp_path / "out", fast(prompt_files, alpha=2.0, dtype="bfloat16")).output

    before = (llama3_source / "config.json").read_text().splitlines()
    after = (out / "config.json").read_text().splitlines()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [
        ('  "mlp_bias": false,', '  "mlp_bias": true,'),
        ('  "torch_dtype": "float32",', '  "torch_dtype": "bfloat16",'),
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == 500000.0 and config["rope_scaling"] == LLAMA3_ROPE
    assert "rope_parameters" not in config and "dtype" not in config
    assert config["transformers_version"] == "4.57.6"  # the source's, untouched

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (llama3_source / name).read_bytes(), name
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    # what transformers 4 reads from it is what transformers 5 validated
    assert transformers4_reading(config, "llama")["rope_theta"] == 500000.0


def test_a_transformers4_source_bakes_exactly_with_its_rope(llama3_source: Path, prompt_files, tmp_path: Path) -> None:
    """Checked independently of the validator: the written checkpoint against the hooked source, and the rope base
    matters (the same weights read with rope base 10000 are another model)."""
    result = convert(str(llama3_source), tmp_path / "out", fast(prompt_files, alpha=2.0))
    offsets = SteeringVector.load(result.output / "steering.safetensors").offsets(result.band, 2.0)
    baked, hooked = _logits(result.output), _logits(llama3_source, offsets=offsets)
    assert float((baked - hooked).abs().max() / hooked.abs().max()) < 1e-5

    wrong = tmp_path / "rope10000"
    shutil.copytree(result.output, wrong)
    config = json.loads((wrong / "config.json").read_text())
    del config["rope_theta"], config["rope_scaling"]  # what transformers 4 saw in outputs before this issue
    (wrong / "config.json").write_text(json.dumps(config))
    assert float((_logits(wrong) - hooked).abs().max() / hooked.abs().max()) > 1e-2


def test_a_transformers5_source_with_a_non_default_rope_gets_the_legacy_keys(prompt_files, tmp_path: Path) -> None:
    """A source saved by transformers 5 holds its rope base only in ``rope_parameters``: transformers 4 would read
    10000, so the output adds the top-level keys (and nothing else)."""
    source = save_model(llama_config(rope_parameters={"rope_type": "default", "rope_theta": 500000.0}), tmp_path / "s")
    raw = json.loads((source / "config.json").read_text())
    assert "rope_theta" not in raw and raw["rope_parameters"]["rope_theta"] == 500000.0
    out = convert(str(source), tmp_path / "out", fast(prompt_files, alpha=1.0)).output
    config = json.loads((out / "config.json").read_text())
    assert set(config) - set(raw) == {"rope_theta"} and config["rope_theta"] == 500000.0
    assert {k for k in raw if raw[k] != config[k]} == {"mlp_bias"}
    assert config["rope_parameters"] == raw["rope_parameters"]


@pytest.mark.parametrize("family", ["mistral", "qwen2", "phi3"])
def test_a_remap_writes_both_rope_layouts_and_both_dtype_keys(family: str, prompt_files, tmp_path: Path) -> None:
    import transformers

    from bakesteer.architectures.registry import REGISTRY as R

    config_class = {"mistral": "MistralConfig", "qwen2": "Qwen2Config", "phi3": "Phi3Config"}[family]
    extra = {"qwen2": {"use_sliding_window": False}, "phi3": {"original_max_position_embeddings": 256}}
    from fixtures import LLAMA_LIKE

    config = getattr(transformers, config_class)(
        **LLAMA_LIKE,
        sliding_window=None,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        **extra.get(family, {}),
    )
    source = save_model(config, tmp_path / family)
    out = convert(str(source), tmp_path / "out", fast(prompt_files, alpha=1.0)).output
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] == R[family].remap.target == "llama"
    assert written["rope_parameters"]["rope_theta"] == written["rope_theta"] == 1000000.0
    assert written["rope_scaling"] is None
    assert written["dtype"] == written["torch_dtype"] == "float32"
    assert reader_mismatches(written, transformers.AutoConfig.from_pretrained(out)) == []


def test_a_gguf_source_writes_both_layouts_and_a_tokenizer_class_transformers4_has(
    prompt_files, tmp_path: Path
) -> None:
    """A tiny Llama exported to GGUF (with the gguf package, as llama.cpp's converter would name the tensors) with a
    rope base of 500000: the materialised config transformers builds is written in both layouts."""
    from gguf_fixture import write_tiny_gguf

    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", rope_theta=500000.0)
    out = convert(str(gguf_path), tmp_path / "out", fast(prompt_files, alpha=1.0)).output
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 500000.0
    assert config["dtype"] == config["torch_dtype"]
    assert config["mlp_bias"] is True and config["architectures"] == ["LlamaForCausalLM"]
    tokenizer = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer["tokenizer_class"] == transformers4.TOKENIZER_CLASS_FOR_4
    assert "local_files_only" not in tokenizer
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out)("bake bread")["input_ids"]


def test_reader_mismatches_names_the_field_transformers4_misreads() -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(rope_parameters={"rope_theta": 500000.0, **LLAMA3_ROPE}, dtype="bfloat16")
    raw = json.loads(config.to_json_string(use_diff=False))
    problems = reader_mismatches(raw, config)
    assert [p.split(":")[0] for p in problems] == ["rope_scaling", "rope_theta"]
    assert "transformers 4 reads 10000.0, the model was validated with 500000.0" in problems[1]
    fixed = {**raw, **portable_updates(raw, always=True)}
    assert reader_mismatches(fixed, config) == []
    assert fixed["torch_dtype"] == fixed["dtype"] == "bfloat16"
    # GPT-NeoX: transformers 4 reads rotary_emb_base / rotary_pct, not rope_theta
    assert legacy_rope({"rope_type": "default", "rope_theta": 20000.0, "partial_rotary_factor": 0.5}, "gpt_neox") == {
        "rotary_emb_base": 20000.0,
        "rope_theta": 20000.0,
        "rotary_pct": 0.5,
        "partial_rotary_factor": 0.5,
        "rope_scaling": None,
    }
    # a norm or vocabulary field transformers 4 would default differently
    raw2 = {k: v for k, v in raw.items() if k != "rms_norm_eps"}
    assert any(p.startswith("rms_norm_eps") for p in reader_mismatches(raw2, LlamaConfig(rms_norm_eps=1e-5)))


def test_validation_fails_on_a_config_transformers4_would_misread(
    llama3_source: Path, prompt_files, tmp_path: Path
) -> None:
    """The check runs on the written file: a config.json that loses its top-level rope keys after writing (as outputs
    did before this issue) fails the conversion with the field named, and nothing is left."""
    import bakesteer.bake as bake

    original = bake.output_config_text

    def drop_legacy(*args, **kwargs):
        raw = json.loads(original(*args, **kwargs))
        raw["rope_parameters"] = {"rope_type": "llama3", "rope_theta": raw.pop("rope_theta"), **raw.pop("rope_scaling")}
        return json.dumps(raw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("bakesteer.pipeline.output_config_text", drop_legacy)
        with pytest.raises(ValidationError) as err:
            convert(str(llama3_source), tmp_path / "out", fast(prompt_files, alpha=1.0))
    assert err.value.check == "readers"
    assert "rope_theta: transformers 4 reads 10000.0, the model was validated with 500000.0" in str(err.value)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_edit_json_keeps_layout() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.json"
        path.write_text('{\n    "b": 1,\n    "a": "é",\n    "c": [1, 2]\n}')
        edit_json(path, {"a": "x", "d": True})
        assert (
            path.read_text()
            == '{\n    "b": 1,\n    "a": "x",\n    "c": [\n        1,\n        2\n    ],\n    "d": true\n}'
        )
