"""Registry completeness: every entry has a tiny fixture and bakes exactly in float32 and bfloat16; guards and
refusals give one line with the reason; the docs' support table is generated from the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures import FIXTURES

from bakesteer import ConvertOptions, convert
from bakesteer.architectures import REGISTRY, spec_for
from bakesteer.architectures.registry import REFUSED
from bakesteer.architectures.table import END, START, support_table
from bakesteer.configfiles import reader_mismatches
from bakesteer.errors import UnsupportedArchitectureError
from bakesteer.hooks import steering
from bakesteer.validation import FLOOR_FACTOR, FP32_TOLERANCE
from bakesteer.vector import SteeringVector


def _exact_and_not_base(output: Path, source: Path, spec: str) -> None:
    """Measured without the validator (tests/fixtures.compare_with_hooked): baked == hooked, baked != base."""
    from fixtures import compare_with_hooked

    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 100, 200, 300]])
    measured = compare_with_hooked(output, source, ids, dtype=torch.float32, spec=spec)
    assert measured["baked_vs_hooked"] <= FP32_TOLERANCE < 1e-2 < measured["baked_vs_base"], measured


def test_every_entry_has_a_fixture() -> None:
    assert set(REGISTRY) == set(FIXTURES)
    assert not set(REGISTRY) & set(REFUSED)


@pytest.fixture(scope="module")
def sources(models_dir: Path) -> dict[str, Path]:
    return {name: build(models_dir / f"arch-{name}") for name, build in FIXTURES.items()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("model_type", sorted(REGISTRY))
def test_entry_bakes_exactly(model_type: str, dtype: str, sources, prompt_files, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    src = sources[model_type]
    spec = REGISTRY[model_type]
    remote = spec.remote is not None
    opts = ConvertOptions(
        positive=prompt_files[0], negative=prompt_files[1], dtype=dtype, greedy_tokens=20, allow_remote_code=remote
    )
    result = convert(str(src), tmp_path / "out", opts)
    # measured here, not read from the validator's report (tests/fixtures.compare_with_hooked)
    from fixtures import compare_with_hooked

    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 100, 200, 300]])
    measured = compare_with_hooked(
        result.output, src, ids, dtype=getattr(torch, dtype), spec=model_type, trust_remote_code=remote
    )
    assert measured["baked_vs_base"] > 1e-2, measured  # baked != base
    # every file is its base's plus the stated offsets (linked, rewritten, remapped or remote code alike)
    from bakesteer.verify import verify

    report = verify(result.output, base=str(src))
    assert report.ok, [str(d) for d in report.differences]
    if dtype == "float32":
        assert measured["baked_vs_hooked"] <= FP32_TOLERANCE, measured
    else:  # both sit about one floor from the float32 truth (the validator's rule, measured here again)
        assert measured["baked_vs_hooked"] <= max(FLOOR_FACTOR * measured["floor"], FP32_TOLERANCE), measured

    written = json.loads((result.output / "config.json").read_text())
    reloaded = AutoConfig.from_pretrained(result.output, trust_remote_code=remote)
    expected_type = spec.remap.target if spec.remap else f"steered_{model_type}" if remote else model_type
    assert reloaded.model_type == written["model_type"] == expected_type
    for key, value in result.metadata["architecture"]["config_updates"].items():
        assert written[key] == value and getattr(reloaded, key) == value  # config round-trip
    # the source's own config.json, with only the bake's keys changed; read alike by transformers 4 (issue 17)
    assert reader_mismatches(written, reloaded) == []
    if spec.remap is None:
        source_raw = json.loads((src / "config.json").read_text())
        changed = {k for k in source_raw if source_raw[k] != written.get(k)} | (set(written) - set(source_raw))
        bake_keys = {"model_type", "architectures", "auto_map"} if remote else set()
        allowed = set(result.metadata["architecture"]["config_updates"]) | {"dtype"} | bake_keys
        assert changed <= allowed, changed - allowed
    if remote:
        with pytest.raises(ValueError):  # a plain load fails loudly instead of silently dropping the steering
            AutoConfig.from_pretrained(result.output)
    assert result.metadata["architecture"]["runtimes"] == list(spec.runtimes)

    if dtype == "float32":
        # 20 greedy tokens with KV cache: the plain reload continues exactly like the hooked source
        offsets = SteeringVector.load(result.output / "steering.safetensors").offsets(result.band, 1.0)
        ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
        baked = AutoModelForCausalLM.from_pretrained(result.output, trust_remote_code=remote).eval()
        source = AutoModelForCausalLM.from_pretrained(src).eval()
        kw = {"do_sample": False, "max_new_tokens": 20, "min_new_tokens": 20, "pad_token_id": 0}
        with torch.no_grad(), steering(source, spec, offsets):
            hooked_tokens = source.generate(ids, **kw)
        with torch.no_grad():
            assert torch.equal(baked.generate(ids, **kw), hooked_tokens)


def test_starcoder2_without_biases_switches_the_flag(models_dir: Path, prompt_files, tmp_path: Path) -> None:
    from fixtures import LLAMA_LIKE, save_model
    from transformers import Starcoder2Config

    src = save_model(Starcoder2Config(**LLAMA_LIKE, use_bias=False, sliding_window=None), models_dir / "sc2-nobias")
    result = convert(str(src), tmp_path / "out", ConvertOptions(positive=prompt_files[0], negative=prompt_files[1]))
    assert result.metadata["architecture"]["strategy"] == "native_flag"
    assert result.metadata["architecture"]["config_updates"] == {"use_bias": True}
    _exact_and_not_base(result.output, src, "starcoder2")


def _config(name: str, **kw):
    import transformers

    return getattr(transformers, name)(**kw)


@pytest.mark.parametrize(
    ("config_name", "fields", "reason"),
    [
        ("MistralConfig", {"sliding_window": 4096, "max_position_embeddings": 32768}, "sliding-window"),
        ("Qwen2Config", {"use_sliding_window": True, "sliding_window": 128, "max_window_layers": 0}, "sliding-window"),
        ("MistralConfig", {"sliding_window": None, "hidden_act": "gelu"}, "hard-code SiLU"),
        ("MistralConfig", {"sliding_window": None, "partial_rotary_factor": 0.75}, "partial_rotary_factor"),
        ("Gemma2Config", {}, "--allow-remote-code"),
        ("Gemma3Config", {}, "--allow-remote-code"),
        ("Qwen2MoeConfig", {}, "--allow-remote-code"),
        ("Gemma3TextConfig", {}, "post_feedforward_layernorm"),
        ("Olmo2Config", {}, "post-norm"),
        ("MixtralConfig", {}, "experts have no bias"),
        ("Phi3Config", {"partial_rotary_factor": 0.75, "sliding_window": None}, "partial_rotary_factor"),
        ("Phi3Config", {"sliding_window": 2047, "max_position_embeddings": 4096}, "sliding-window"),
        ("Qwen3Config", {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 0}, "sliding-window"),
        ("Qwen3MoeConfig", {}, "half a layer earlier"),
        ("GemmaConfig", {"tie_word_embeddings": False}, "untied"),
        ("GPTJConfig", {}, ""),
    ],
)
def test_refusals_name_the_reason(config_name: str, fields: dict, reason: str) -> None:
    with pytest.raises(UnsupportedArchitectureError) as info:
        spec_for(_config(config_name, **fields))
    line = info.value.one_line()
    assert reason in line and "\n" not in line
    assert "supported: " in line and info.value.hint
    assert info.value.supported == sorted(REGISTRY)


def test_mistral_with_a_window_longer_than_its_context_is_llama() -> None:
    config = _config("MistralConfig", sliding_window=32768, max_position_embeddings=32768)
    assert spec_for(config).model_type == "mistral"


def test_docs_support_table_is_generated_from_the_registry() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "architectures.md").read_text()
    block = page[page.index(START) : page.index(END) + len(END)]
    assert block == support_table(), "regenerate it: python -m bakesteer.architectures.table"


def test_phi3_longrope_remap_is_exact(models_dir: Path, prompt_files, tmp_path: Path) -> None:
    from fixtures import LLAMA_LIKE, save_model
    from transformers import Phi3Config

    # original context 16: the probes (about 25 tokens with the template) run on the long factors
    rope = {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "original_max_position_embeddings": 16,
        "long_factor": [1.0 + i / 8 for i in range(8)],
        "short_factor": [1.0 + i / 16 for i in range(8)],
    }
    config = Phi3Config(**LLAMA_LIKE, sliding_window=None, rope_parameters=rope, original_max_position_embeddings=16)
    src = save_model(config, models_dir / "phi3-longrope")
    result = convert(str(src), tmp_path / "out", ConvertOptions(positive=prompt_files[0], negative=prompt_files[1]))
    _exact_and_not_base(result.output, src, "phi3")
    written = json.loads((result.output / "config.json").read_text())
    assert written["model_type"] == "llama" and written["rope_parameters"]["rope_type"] == "longrope"
    assert written["rope_parameters"]["long_factor"] == rope["long_factor"]


def test_gemma_remap_unties_and_prescales(sources, prompt_files, tmp_path: Path) -> None:
    from safetensors import safe_open

    src = sources["gemma"]
    result = convert(str(src), tmp_path / "out", ConvertOptions(positive=prompt_files[0], negative=prompt_files[1]))
    written = json.loads((result.output / "config.json").read_text())
    assert written["tie_word_embeddings"] is False and written["hidden_act"] == "gelu_pytorch_tanh"
    with (
        safe_open(str(src / "model.safetensors"), "pt") as a,
        safe_open(str(result.output / "model.safetensors"), "pt") as b,
    ):
        emb = a.get_tensor("model.embed_tokens.weight")
        assert torch.equal(b.get_tensor("lm_head.weight"), emb)
        assert torch.equal(b.get_tensor("model.embed_tokens.weight"), emb * float(torch.tensor(64**0.5)))
        norm = a.get_tensor("model.layers.0.input_layernorm.weight")
        assert torch.equal(b.get_tensor("model.layers.0.input_layernorm.weight"), norm + 1)


def test_mixtral_remote_code_keeps_the_expert_conversion(sources, prompt_files, tmp_path: Path) -> None:
    """transformers converts per-expert checkpoint keys to fused experts by model_type; the steered type must too."""
    from safetensors import safe_open

    with safe_open(str(sources["mixtral"] / "model.safetensors"), "pt") as f:
        assert any(".experts.0.w1.weight" in k for k in f.keys())  # stored per expert, fused on load
    opts = ConvertOptions(positive=prompt_files[0], negative=prompt_files[1], allow_remote_code=True)
    result = convert(str(sources["mixtral"]), tmp_path / "out", opts)
    assert result.validation.relative_diff == 0.0 < result.validation.base_relative_diff
    code = (result.output / "modeling_steered.py").read_text()
    assert (
        'register_checkpoint_conversion_mapping("steered_mixtral"' in code and "bakesteer" not in code.split('"""')[2]
    )


def test_gemma3_multimodal_loads_as_image_text_to_text(sources, prompt_files, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText

    opts = ConvertOptions(positive=prompt_files[0], negative=prompt_files[1], allow_remote_code=True)
    result = convert(str(sources["gemma3"]), tmp_path / "out", opts)
    config = json.loads((result.output / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM", "AutoModelForImageTextToText"}
    model = AutoModelForImageTextToText.from_pretrained(result.output, trust_remote_code=True)
    vectors = [layer.steering_vector for layer in model.model.language_model.layers]
    assert [bool(v.any()) for v in vectors] == [False, False, True, True, True]


def test_tied_qwen2_stays_tied_under_the_remap(models_dir: Path, prompt_files, tmp_path: Path) -> None:
    # LlamaConfig defaults to untied embeddings: a remap that dropped the flag would leave lm_head random
    from fixtures import LLAMA_LIKE, save_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    src = save_model(Qwen2Config(**LLAMA_LIKE, tie_word_embeddings=True), models_dir / "qwen2-tied", seed=7)
    result = convert(str(src), tmp_path / "out", ConvertOptions(positive=prompt_files[0], negative=prompt_files[1]))
    assert json.loads((result.output / "config.json").read_text())["tie_word_embeddings"] is True
    model = AutoModelForCausalLM.from_pretrained(result.output)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    _exact_and_not_base(result.output, src, "qwen2")


def test_vector_for_a_remote_code_family_needs_no_opt_in(sources, prompt_files, tmp_path: Path) -> None:
    from bakesteer import compute_vector

    vec = compute_vector(
        str(sources["olmo2"]),
        tmp_path / "v.safetensors",
        ConvertOptions(positive=prompt_files[0], negative=prompt_files[1]),
    )
    assert vec.model_type == "olmo2" and vec.num_layers == 5
