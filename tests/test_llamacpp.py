"""Slow tier: llama.cpp itself (llama-cpp-python 0.3.36, built from source by `make test-slow`), on SmolLM2.

- The exported control vector, applied to the SmolLM2 GGUF, moves llama.cpp's next-token logits like the baked
  transformers checkpoint moves transformers' (cosine of the two shifts, float32 GGUF; the shipped Q4_1 reported).
- A ``--gguf`` export of the baked checkpoint (llama.cpp's own converter, f32) gives llama.cpp logits equal to
  transformers' to 1e-4 of max |logit| (with a float32 KV cache; llama.cpp's default f16 cache costs ~4e-4).

The control vector is handed to llama.cpp the way its CLI does (``common_control_vector_load`` then
``llama_set_adapter_cvec``, from ``common/common.cpp``); the loader is not exposed by llama-cpp-python, so
:func:`load_like_llama_cpp` follows it line by line: ``direction.N`` (N >= 1, F32, 1-D) at offset ``n_embd * (N - 1)``,
layers 1 to ``n_layer``.
"""

from __future__ import annotations

import ctypes
import json
import math
from pathlib import Path

import pytest
import torch

from bakesteer import ConvertOptions, convert
from bakesteer.architectures.readers import READER_RUNS
from bakesteer.export import export_control_vector, export_gguf, find_converter

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PROMPTS = 6


def load_like_llama_cpp(path: Path) -> tuple[int, list[float]]:
    """``common_control_vector_load_one`` (common/common.cpp at 0c1e570), for one file at strength 1."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    n_embd, data = -1, []
    for tensor in reader.tensors:
        head, _, index = tensor.name.partition(".")
        assert head == "direction" and int(index) > 0, tensor.name  # llama.cpp rejects the file otherwise
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32 and len(tensor.shape) == 1
        layer = int(index)
        n_embd = int(tensor.shape[0]) if n_embd == -1 else n_embd
        assert int(tensor.shape[0]) == n_embd
        data.extend([0.0] * max(0, n_embd * layer - len(data)))
        for j, value in enumerate(tensor.data.tolist()):
            data[n_embd * (layer - 1) + j] += value
    return n_embd, data


class LlamaCpp:
    """A llama.cpp model (float32 logits of the last position), optionally with a control vector."""

    def __init__(self, model: Path, control_vector: Path | None = None) -> None:
        import llama_cpp

        # a float32 KV cache: llama.cpp's default (f16) alone moves logits by ~4e-4 of max |logit| on SmolLM2
        self.llm = llama_cpp.Llama(
            model_path=str(model),
            n_ctx=512,
            n_threads=2,
            logits_all=True,
            verbose=False,
            seed=0,
            type_k=llama_cpp.GGML_TYPE_F32,
            type_v=llama_cpp.GGML_TYPE_F32,
            flash_attn=False,
        )
        if control_vector is not None:
            n_embd, data = load_like_llama_cpp(control_vector)
            n_layer = llama_cpp.llama_model_n_layer(self.llm._model.model)
            buffer = (ctypes.c_float * len(data))(*data)
            # common.cpp: layer_start <= 0 -> 1, layer_end <= 0 -> llama_model_n_layer(model)
            err = llama_cpp.llama_set_adapter_cvec(self.llm._ctx.ctx, buffer, len(data), n_embd, 1, n_layer)
            assert err == 0

    def last_logits(self, ids: list[int]) -> torch.Tensor:
        self.llm.reset()
        self.llm.eval(ids)
        return torch.tensor(self.llm.scores[len(ids) - 1], dtype=torch.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bakesteer.demo import smollm2_gguf
    from bakesteer.dequantize import materialize_gguf
    from bakesteer.prompts import load_prompt_set, render_prompts
    from bakesteer.source import resolve_source

    find_converter(ROOT / ".cache" / "llama.cpp")  # `make llama-cpp`
    tmp = tmp_path_factory.mktemp("llamacpp")
    q4 = smollm2_gguf()
    (tmp / "source").mkdir()
    source = materialize_gguf(resolve_source(str(q4)), torch.float32, tmp / "source").directory
    baked = convert(str(source), tmp / "baked", ConvertOptions(alpha=1.0)).output
    cv = export_control_vector(baked, tmp / "refusal.gguf").path
    base_f32 = _convert_plain(source, tmp / "base-f32.gguf")
    baked_f32 = export_gguf(baked, tmp / "baked-f32.gguf", outtype="f32", llama_cpp=ROOT / ".cache" / "llama.cpp")

    tok = AutoTokenizer.from_pretrained(source)
    ids = render_prompts(tok, list(load_prompt_set(None, "eval").prompts[:PROMPTS]), chat_template=True)
    logits = {}
    for name, directory in (("base", source), ("baked", baked)):
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        with torch.no_grad():
            logits[name] = torch.stack([model(input_ids=torch.tensor([seq])).logits[0, -1] for seq in ids])
        del model
    return {"ids": ids, "tf": logits, "cv": cv, "q4": q4, "base_f32": base_f32, "baked_f32": baked_f32}


def _convert_plain(source: Path, out: Path) -> Path:
    """The unsteered float32 source as an F32 GGUF, with the same converter (not a bakesteer output)."""
    import subprocess
    import sys

    script = find_converter(ROOT / ".cache" / "llama.cpp")
    subprocess.run(
        [sys.executable, str(script), str(source), "--outfile", str(out), "--outtype", "f32"],
        check=True,
        capture_output=True,
    )
    return out


def _cosines(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    cosine = torch.nn.functional.cosine_similarity
    return [float(cosine(x.double(), y.double(), dim=0)) for x, y in zip(a, b, strict=True)]


def _lc(model: Path, ids: list[list[int]], cv: Path | None = None) -> torch.Tensor:
    runner = LlamaCpp(model, cv)
    out = torch.stack([runner.last_logits(seq) for seq in ids])
    del runner
    return out


def test_control_vector_moves_llama_cpp_like_the_bake(setup: dict, record_property) -> None:
    ids, tf = setup["ids"], setup["tf"]
    tf_shift = tf["baked"] - tf["base"]
    figures = {}
    for name in ("base_f32", "q4"):
        plain, steered = _lc(setup[name], ids), _lc(setup[name], ids, setup["cv"])
        figures[name] = _cosines(steered - plain, tf_shift)
    record_property("cosines", json.dumps(figures))
    print(f"\ncosine of the logit shifts, llama.cpp control vector vs baked transformers: {json.dumps(figures)}")
    assert min(figures["base_f32"]) >= 0.99
    assert all(math.isfinite(c) for c in figures["q4"])


def test_gguf_export_runs_in_llama_cpp_like_transformers(setup: dict, record_property) -> None:
    ids, tf = setup["ids"], setup["tf"]
    baked = _lc(setup["baked_f32"], ids)
    relative = float((baked - tf["baked"]).abs().max() / tf["baked"].abs().max())
    base = _lc(setup["base_f32"], ids)
    relative_base = float((base - tf["base"]).abs().max() / tf["base"].abs().max())
    record_property("relative", relative)
    print(f"\nllama.cpp vs transformers, max|logit diff| / max|logit|: baked {relative:.3g}, base {relative_base:.3g}")
    # the bound the cards quote (bakesteer/architectures/readers.py)
    assert relative <= next(run for run in READER_RUNS if run.key == "llama.cpp").max_relative_diff
    # and the bake shows: llama.cpp's baked model differs from its base like transformers' does
    assert min(_cosines(baked - base, tf["baked"] - tf["base"])) >= 0.999
