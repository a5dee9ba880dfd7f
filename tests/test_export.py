"""``bakesteer export``: llama.cpp control vectors read back with the gguf package, and the refusals of both exports.

Running llama.cpp itself is the slow tier (``tests/test_llamacpp.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fixtures import FIXTURES, output_tensors

from bakesteer import ConvertOptions, convert
from bakesteer.cli import main
from bakesteer.vector import SteeringVector


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def baked(llama_dir: Path, prompt_files, tmp_path_factory: pytest.TempPathFactory) -> Path:
    options = ConvertOptions(positive=prompt_files[0], negative=prompt_files[1], alpha=0.8, probes=4, greedy_tokens=4)
    return convert(str(llama_dir), tmp_path_factory.mktemp("export") / "out", options).output


def _read(path: Path) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        value = field.parts[field.data[0]]
        fields[name] = bytes(value).decode() if field.types[0] == gguf.GGUFValueType.STRING else value.tolist()[0]
    tensors = {}
    for tensor in reader.tensors:
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32 and len(tensor.shape) == 1
        tensors[tensor.name] = torch.from_numpy(tensor.data.copy())
    return fields, tensors


def test_control_vector_holds_the_baked_offsets_and_nothing_else(baked: Path, tmp_path: Path) -> None:
    out = tmp_path / "refusal.gguf"
    code, stdout, err = _cli("export", str(baked), "--control-vector", str(out))
    assert code == 0, err
    assert (
        stdout
        == f"wrote {out}: 3 directions (blocks 2-4, k=0.8, model hint llama); llama.cpp: --control-vector {out}\n"
    )
    fields, tensors = _read(out)
    assert fields == {
        "general.architecture": "controlvector",
        "controlvector.model_hint": "llama",
        "controlvector.layer_count": 3,
    }
    # direction.N is added to the output of block N by llama.cpp: exactly the bias baked into block N (Llama adds
    # its down_proj bias to the residual unscaled)
    weights = output_tensors(baked)
    assert sorted(tensors) == ["direction.2", "direction.3", "direction.4"]
    for block in (2, 3, 4):
        assert torch.equal(tensors[f"direction.{block}"], weights[f"model.layers.{block}.mlp.down_proj.bias"])
    for block in (0, 1):
        assert not weights[f"model.layers.{block}.mlp.down_proj.bias"].any()


def test_another_k_or_band_and_a_bare_vector_file(baked: Path, tmp_path: Path) -> None:
    vector = SteeringVector.load(baked / "steering.safetensors")
    code, _, err = _cli("export", str(baked), "--control-vector", str(tmp_path / "k2.gguf"), "--alpha", "-2")
    assert code == 0, err
    _, tensors = _read(tmp_path / "k2.gguf")
    expected = vector.offsets((2, 5), -2.0)
    assert all(torch.equal(tensors[f"direction.{b}"], expected[b]) for b in (2, 3, 4))

    bare = tmp_path / "vector.safetensors"
    bare.write_bytes((baked / "steering.safetensors").read_bytes())
    code, out, err = _cli("export", str(bare), "--control-vector", str(tmp_path / "x.gguf"))
    assert code == 2 and not out and "Traceback" not in err
    assert err == (
        "bakesteer: error: cannot export vector.safetensors: a vector file records no k and no band; pass --alpha "
        "and --layers (or export the converted output directory)\n"
    )
    assert not (tmp_path / "x.gguf").exists()
    code, _, err = _cli(
        "export", str(bare), "--control-vector", str(tmp_path / "x.gguf"), "--alpha", "1", "--layers", "1-3"
    )
    assert code == 0, err
    _, tensors = _read(tmp_path / "x.gguf")
    expected = vector.offsets((1, 4), 1.0)
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.3"]
    assert all(torch.equal(tensors[f"direction.{b}"], expected[b]) for b in (1, 2, 3))


def test_block_zero_and_existing_files_are_refused(baked: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv.gguf"
    code, stdout, err = _cli("export", str(baked), "--control-vector", str(out), "--layers", "0-2")
    assert code == 2 and not stdout and not out.exists()
    assert err.startswith("bakesteer: error: cannot export out: the band starts at block 0, which a llama.cpp control")
    assert err.endswith("; pass --layers starting at block 1 or later, e.g. --layers 1-2\n")
    out.write_text("mine")
    code, _, err = _cli("export", str(baked), "--control-vector", str(out))
    assert code == 2 and out.read_text() == "mine" and "exists" in err
    assert [p.name for p in tmp_path.iterdir()] == ["cv.gguf"]  # no partial file left either time


def test_gguf_export_refuses_families_llama_cpp_cannot_run_and_a_missing_converter(
    baked: Path, prompt_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    qwen3 = FIXTURES["qwen3"](tmp_path / "qwen3")
    options = ConvertOptions(positive=prompt_files[0], negative=prompt_files[1], probes=4, greedy_tokens=4)
    remapped = convert(str(qwen3), tmp_path / "hy", options).output  # Qwen3 baked as HY-V3: transformers only
    code, _, err = _cli("export", str(remapped), "--gguf", str(tmp_path / "q.gguf"))
    assert code == 2 and err == (
        "bakesteer: error: cannot export hy: llama.cpp does not run a qwen3 checkpoint with its baked biases; "
        "export the offsets instead: bakesteer export DIR --control-vector FILE.gguf\n"
    )
    monkeypatch.chdir(tmp_path)  # no .cache/llama.cpp here
    monkeypatch.setenv("BAKESTEER_LLAMA_CPP", str(tmp_path / "nowhere"))
    code, _, err = _cli("export", str(baked), "--gguf", str(tmp_path / "b.gguf"))
    assert code == 2 and "llama.cpp's convert_hf_to_gguf.py was not found" in err and "make llama-cpp" in err
    assert not (tmp_path / "b.gguf").exists()
    code, _, err = _cli("export", str(baked))
    assert code == 2 and "nothing to write" in err


LLAMA_CPP = Path(__file__).resolve().parents[1] / ".cache" / "llama.cpp"


def _llama_cpp() -> Path:
    if not (LLAMA_CPP / "src" / "models").is_dir():
        pytest.fail("llama.cpp's source is not in .cache/llama.cpp: run `make llama-cpp` (`make test` does)")
    return LLAMA_CPP


def test_the_llama_cpp_claims_hold_in_its_source() -> None:
    """What the export module, the README and the support table say llama.cpp does, checked in the source the
    pinned sdist vendors: the loader's rules, no vector for layer 0, the vector added at the block output of every
    graph the registry names, and the ffn_down bias loaded by the graph of every family that claims llama.cpp."""
    from bakesteer.architectures import REGISTRY
    from bakesteer.architectures.readers import output_family
    from bakesteer.architectures.registry import LLAMA_CPP_GRAPHS

    tree = _llama_cpp()
    common = (tree / "common" / "common.cpp").read_text()
    for needle in (
        'name.substr(0, dotpos) == "direction"',
        "invalid (zero) direction tensor layer index",
        "tensor->type != GGML_TYPE_F32",
        "ggml_n_dims(tensor) != 1",
        "result.n_embd * (layer_idx - 1)",
        "params.control_vector_layer_start = 1;",
    ):
        assert needle in common, needle
    adapter = (tree / "src" / "llama-adapter.cpp").read_text()
    assert "tensors.push_back(nullptr); // there's never a tensor for layer 0" in adapter
    assert "cur = ggml_add(ctx, cur, layer_dir);" in adapter
    for model_type, graph in LLAMA_CPP_GRAPHS.items():
        source = (tree / "src" / "models" / f"{graph}.cpp").read_text()
        assert "build_cvec(cur, il)" in source, (model_type, graph)
    claims = [spec for spec in REGISTRY.values() if "llama.cpp" in spec.runtimes]
    assert {s.model_type for s in claims} >= {"llama", "gpt2", "phi", "starcoder2"}
    for spec in claims:
        source = (tree / "src" / "models" / f"{LLAMA_CPP_GRAPHS[output_family(spec)]}.cpp").read_text()
        assert "ffn_down_b" in source or "ffn_down_exps_b" in source, spec.model_type


def test_every_runtime_claim_names_its_check() -> None:
    from bakesteer.architectures import REGISTRY
    from bakesteer.architectures.readers import runtime_checks

    for spec in REGISTRY.values():
        checks = runtime_checks(spec)  # KeyError for a claim without a source read or a test that runs it
        assert list(checks) == list(spec.runtimes)
        assert checks["transformers"] == "run (test suite)"


def test_a_failing_converter_shows_its_log_under_debug(
    baked: Path, tmp_path: Path, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error's hint says --debug shows the converter's log: it must, also when the converter fails."""
    import logging
    import sys

    from bakesteer.errors import ExportError
    from bakesteer.export import export_gguf

    fake = tmp_path / "llama.cpp"
    (fake / "gguf-py" / "gguf").mkdir(parents=True)
    (fake / "convert_hf_to_gguf.py").write_text(
        "import sys\nprint('loading model parts')\nprint('KeyError: rope_theta', file=sys.stderr)\nsys.exit(1)\n"
    )
    # the converter's own import, checked before it runs (the fake converter needs none): a stand-in package
    (tmp_path / "site" / "sentencepiece").mkdir(parents=True)
    (tmp_path / "site" / "sentencepiece" / "__init__.py").write_text("")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])
    with caplog.at_level(logging.DEBUG, logger="bakesteer.export"), pytest.raises(ExportError) as err:
        export_gguf(baked, tmp_path / "x.gguf", llama_cpp=fake)
    assert "converter failed (exit 1): KeyError: rope_theta" in str(err.value) and "--debug" in err.value.hint
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "loading model parts" in log and "KeyError: rope_theta" in log
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / ".x.gguf.partial").exists()
