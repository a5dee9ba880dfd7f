"""End to end on tiny Llamas: baked == hooked after a plain reload, baked != base, k = 0, sharding, dtypes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from fixtures import compare_with_hooked, output_tensors
from safetensors import safe_open

from bakesteer import ConvertOptions, __version__, convert
from bakesteer.architectures import REGISTRY
from bakesteer.errors import DirectionError, OutputExistsError, VectorFileError
from bakesteer.hooks import steering
from bakesteer.source import resolve_source
from bakesteer.validation import FLOOR_FACTOR, FP32_TOLERANCE
from bakesteer.vector import SteeringVector


def fast(prompt_files, **kw) -> ConvertOptions:
    return ConvertOptions(positive=prompt_files[0], negative=prompt_files[1], **kw)


def plain_logits(directory: Path, input_ids: torch.Tensor, *, dtype=torch.float32, offsets=None) -> torch.Tensor:
    """Logits of a checkpoint loaded with plain transformers, optionally with bakesteer's steering hooks."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()
    with torch.no_grad():
        if offsets is None:
            return model(input_ids).logits.float()
        with steering(model, REGISTRY["llama"], offsets):
            return model(input_ids).logits.float()


IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 100, 200, 300]])


@pytest.mark.parametrize("fixture", ["llama_dir", "llama_tied_dir"])
def test_baked_equals_hooked_and_differs_from_base(request, fixture: str, prompt_files, tmp_path: Path) -> None:
    src = request.getfixturevalue(fixture)
    result = convert(str(src), tmp_path / "out", fast(prompt_files, alpha=2.0))
    out = result.output
    offsets = SteeringVector.load(out / "steering.safetensors").offsets(result.band, 2.0)

    baked = plain_logits(out, IDS)
    hooked = plain_logits(src, IDS, offsets=offsets)
    base = plain_logits(src, IDS)
    assert (baked - hooked).abs().max() / hooked.abs().max() <= FP32_TOLERANCE
    assert (baked - base).abs().max() / base.abs().max() > 1e-2

    config = json.loads((out / "config.json").read_text())
    assert config["mlp_bias"] is True
    assert config["tie_word_embeddings"] == (fixture == "llama_tied_dir")
    tensors = output_tensors(out)
    assert ("lm_head.weight" in tensors) == (fixture == "llama_dir")
    for layer in range(5):
        down = tensors[f"model.layers.{layer}.mlp.down_proj.bias"]
        if layer in range(*result.band):
            torch.testing.assert_close(down, offsets[layer])  # float32 model: written exactly
        else:
            assert not down.any()
        assert not tensors[f"model.layers.{layer}.mlp.gate_proj.bias"].any()
        assert not tensors[f"model.layers.{layer}.mlp.up_proj.bias"].any()


def test_outputs_and_metadata(llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    result = convert(str(llama_dir), tmp_path / "out", fast(prompt_files, alpha=1.0, layers="1-3"))
    out = result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "README.md",
            "bakesteer.json",
            "mu.png",
            "chat_template.jinja",
            "config.json",
            "generation_config.json",
            "model-base.safetensors",
            "model-steering-biases.safetensors",
            "model.safetensors.index.json",
            "steering.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    meta = json.loads((out / "bakesteer.json").read_text())
    assert meta["bakesteer_version"] == __version__
    assert meta["base_model"] == {
        "kind": "local",
        "model_id": "llama",
        "revision": resolve_source(str(llama_dir)).revision,
    }
    assert meta["base_model"]["revision"].startswith("sha256:")
    assert meta["method"]["band"] == {"start": 1, "end_exclusive": 4, "spec": "1-3"}
    assert meta["method"]["k"] == 1.0 and meta["method"]["d_model"] == 64
    assert meta["calibration"]["positive"]["name"] == "harmful.txt"
    assert len(meta["calibration"]["positive"]["sha256"]) == 64
    assert meta["options"]["positive"] == "harmful.txt"
    assert meta["validation"]["passed"] is True
    assert "timings_s" not in meta  # timings differ between identical runs: they go to result.timings / --report
    assert meta["architecture"] == {
        "model_type": "llama",
        "strategy": "native_flag",
        "runtimes": ["transformers", "vllm", "llama.cpp"],
        "config_updates": {"mlp_bias": True},
    }
    # no local paths anywhere in what is written
    for path in out.iterdir():
        if path.suffix in (".json", ".jinja"):
            assert str(tmp_path) not in path.read_text() and str(llama_dir) not in path.read_text()
    with safe_open(str(out / "steering.safetensors"), "pt") as f:
        meta_v = f.metadata()
        assert (meta_v["band_start"], meta_v["band_end"], meta_v["alpha"]) == ("1", "4", "1.0")
        assert f.get_tensor("directions").shape == (5, 64) and f.get_tensor("mu").shape == (5,)
        assert f.get_tensor("offsets")[0].abs().sum() == 0
    assert oct((out / "model-steering-biases.safetensors").stat().st_mode & 0o777) != oct(0o600)


def test_alpha_zero_equals_base(llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    result = convert(str(llama_dir), tmp_path / "out", fast(prompt_files, alpha=0.0))
    torch.testing.assert_close(plain_logits(result.output, IDS), plain_logits(llama_dir, IDS), rtol=0, atol=1e-5)
    assert result.validation.base_relative_diff <= 1e-6


def test_negative_alpha_flips_the_offsets(llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    plus = convert(str(llama_dir), tmp_path / "plus", fast(prompt_files, alpha=1.5))
    minus = convert(str(llama_dir), tmp_path / "minus", fast(prompt_files, alpha=-1.5))
    with (
        safe_open(str(plus.output / "steering.safetensors"), "pt") as a,
        safe_open(str(minus.output / "steering.safetensors"), "pt") as b,
    ):
        torch.testing.assert_close(b.get_tensor("offsets"), -a.get_tensor("offsets"), rtol=0, atol=0)
        torch.testing.assert_close(a.get_tensor("directions"), b.get_tensor("directions"), rtol=0, atol=0)


def test_vector_reuse_skips_calibration(llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    from bakesteer import compute_vector

    vec_path = tmp_path / "vec.safetensors"
    vec = compute_vector(str(llama_dir), vec_path, fast(prompt_files))
    direct = convert(str(llama_dir), tmp_path / "direct", fast(prompt_files, alpha=0.8))
    reused = convert(str(llama_dir), tmp_path / "reused", fast(prompt_files, alpha=0.8, vector=vec_path))
    assert "calibrate" not in reused.timings and "calibrate" in direct.timings
    assert reused.metadata["method"]["vector_reused"] is True
    assert reused.metadata["calibration"]["positive"] == direct.metadata["calibration"]["positive"]
    a, b = output_tensors(direct.output), output_tensors(reused.output)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert vec.num_layers == 5


def test_vector_for_another_model_is_refused(llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    vec = SteeringVector(torch.ones(4), torch.nn.functional.normalize(torch.randn(4, 64), dim=-1), "llama")
    vec.save(tmp_path / "vec.safetensors")
    with pytest.raises(VectorFileError, match="4 layers"):
        convert(str(llama_dir), tmp_path / "out", fast(prompt_files, vector=tmp_path / "vec.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(VectorFileError, match="not a safetensors"):
        convert(str(llama_dir), tmp_path / "out", fast(prompt_files, vector=tmp_path / "junk.safetensors"))
    assert not (tmp_path / "out").exists()


def test_sharded_source_stays_sharded_and_links(llama_sharded_dir: Path, prompt_files, tmp_path: Path) -> None:
    src_index = json.loads((llama_sharded_dir / "model.safetensors.index.json").read_text())
    shards = sorted(set(src_index["weight_map"].values()))
    assert len(shards) > 1
    result = convert(str(llama_sharded_dir), tmp_path / "out", fast(prompt_files))
    out = result.output
    assert not (out / "model.safetensors").exists()  # would make transformers ignore the index
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == sorted([*shards, "model-steering-biases.safetensors"])
    for shard in shards:  # unchanged shards are hard links of the source's, not copies
        assert os.path.samefile(out / shard, llama_sharded_dir / shard)
    assert index["weight_map"]["model.layers.2.mlp.down_proj.bias"] == "model-steering-biases.safetensors"
    total = sum((out / f).stat().st_size for f in set(index["weight_map"].values()))
    assert 0 < index["metadata"]["total_size"] < total
    measured = compare_with_hooked(out, llama_sharded_dir, IDS, dtype=torch.float32)
    assert measured["baked_vs_hooked"] <= FP32_TOLERANCE < 1e-2 < measured["baked_vs_base"]


def test_existing_bias_is_added_to(models_dir: Path, prompt_files, tmp_path: Path) -> None:
    from fixtures import llama_config, save_model
    from transformers import AutoModelForCausalLM

    src = save_model(llama_config(mlp_bias=True), models_dir / "llama-biased", seed=3)
    model = AutoModelForCausalLM.from_pretrained(src)
    before = {i: model.model.layers[i].mlp.down_proj.bias.detach().clone() for i in range(5)}
    assert any(b.abs().sum() > 0 for b in before.values())  # random non-zero biases
    result = convert(str(src), tmp_path / "out", fast(prompt_files))
    offsets = SteeringVector.load(result.output / "steering.safetensors").offsets(result.band, 1.0)
    with safe_open(str(result.output / "model.safetensors"), "pt") as f:  # a bias added to: rewritten whole
        for i in range(5):
            torch.testing.assert_close(f.get_tensor(f"model.layers.{i}.mlp.down_proj.bias"), before[i] + offsets[i])
    assert result.metadata["architecture"]["config_updates"] == {}
    measured = compare_with_hooked(result.output, src, IDS, dtype=torch.float32)
    assert measured["baked_vs_hooked"] <= FP32_TOLERANCE < 1e-2 < measured["baked_vs_base"]


def test_bfloat16_source_uses_a_measured_floor(models_dir: Path, prompt_files, tmp_path: Path) -> None:
    from fixtures import llama_config, save_model

    src = save_model(llama_config(), models_dir / "llama-bf16", dtype=torch.bfloat16, seed=4)
    result = convert(str(src), tmp_path / "out", fast(prompt_files))
    v = result.validation
    assert v.dtype == "bfloat16"
    assert v.floor_relative is not None and v.floor_relative > 0
    assert v.tolerance == pytest.approx(max(FLOOR_FACTOR * v.floor_relative, FP32_TOLERANCE))
    measured = compare_with_hooked(result.output, src, IDS, dtype=torch.bfloat16)  # not the validator's numbers
    assert 0 < measured["floor"] and measured["baked_vs_hooked"] <= FLOOR_FACTOR * measured["floor"]
    assert json.loads((result.output / "config.json").read_text())["dtype"] == "bfloat16"
    tensors = output_tensors(result.output)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    offsets = SteeringVector.load(result.output / "steering.safetensors").offsets(result.band, 1.0)
    # rounded once from float32
    assert torch.equal(tensors["model.layers.3.mlp.down_proj.bias"], offsets[3].to(torch.bfloat16))
    # a bf16 source needs no cast: its file is linked, the biases are the second shard
    assert (result.output / "model-base.safetensors").stat().st_ino == (src / "model.safetensors").stat().st_ino


def test_dtype_conversion(llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    result = convert(str(llama_dir), tmp_path / "out", fast(prompt_files, dtype="float16"))
    with safe_open(str(result.output / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert result.validation.dtype == "float16" and result.validation.floor_relative is not None


def test_existing_output_is_refused_and_kept(llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputExistsError):
        convert(str(llama_dir), out, fast(prompt_files))
    assert (out / "precious.txt").read_text() == "keep me"
    convert(str(llama_dir), out, fast(prompt_files, overwrite=True))
    assert not (out / "precious.txt").exists() and (out / "bakesteer.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or backup left behind


def test_failure_leaves_nothing(llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    # identical sets: the failure comes after loading and calibrating, with the staging directory in use
    out = tmp_path / "deep" / "er" / "out"
    with pytest.raises(DirectionError):
        convert(str(llama_dir), out, ConvertOptions(positive=prompt_files[0], negative=prompt_files[0]))
    assert list(tmp_path.iterdir()) == []  # neither the output, nor hidden staging dirs, nor created parents


def test_the_independent_comparison_fails_on_a_bias_perturbed_after_validation(
    llama_dir: Path, prompt_files, tmp_path: Path
) -> None:
    """tests/fixtures.compare_with_hooked measures a written checkpoint without bakesteer's validator, so it catches
    what changes after validation: one baked bias nudged by 1% of its norm moves the logits past the tolerance."""
    from fixtures import compare_with_hooked
    from safetensors.torch import load_file, save_file

    out = convert(str(llama_dir), tmp_path / "out", fast(prompt_files, alpha=2.0)).output
    before = compare_with_hooked(out, llama_dir, IDS, dtype=torch.float32)
    assert before["baked_vs_hooked"] <= FP32_TOLERANCE < before["baked_vs_base"]

    shard = out / "model-steering-biases.safetensors"
    tensors = load_file(shard)
    key = "model.layers.3.mlp.down_proj.bias"
    tensors[key] = tensors[key] + 0.01 * tensors[key].norm() * torch.ones_like(tensors[key]) / 8
    shard.unlink()  # a hard link would change the source too; the bias shard is the output's own file
    save_file(tensors, str(shard), metadata={"format": "pt"})
    after = compare_with_hooked(out, llama_dir, IDS, dtype=torch.float32)
    assert after["baked_vs_hooked"] > 10 * FP32_TOLERANCE
