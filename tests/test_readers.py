"""Slow tier: one checkpoint, every reader (issue 17). `make test-slow` (the reader environments come from
`make readers`).

Each output is loaded as a downloader would in transformers 4.57 (its own environment), mlx-lm on mlx-cpu and vLLM's
CPU build, and compared with the hooked source in float32 on the same token ids: max |Δlogit| / max |logit| and top-1
agreement. Each output's tokenizer must load and give transformers 5's ids. The figures are written to
``.bench/readers.json`` and printed; the registry's recorded figures (``bakesteer/architectures/readers.py``, which
the cards quote) must bound them. llama.cpp is run by tests/test_llamacpp.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fixtures import LLAMA3_ROPE, as_transformers4_layout, llama_config, save_model

from bakesteer import ConvertOptions, convert
from bakesteer.architectures import REGISTRY, transformers4
from bakesteer.architectures.readers import READER_RUNS
from bakesteer.demo import smollm2_gguf
from bakesteer.hooks import steering
from bakesteer.vector import SteeringVector

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).parent / "readers"
#: reader -> (interpreter made by `make readers`, script)
READERS = {
    "transformers4": (ROOT / ".venv-tf4/bin/python", HERE / "transformers_logits.py"),
    "mlx-lm": (ROOT / ".venv-mlx/bin/python", HERE / "mlx_logits.py"),
    "vllm": (ROOT / ".venv-vllm/bin/python", HERE / "vllm_logits.py"),
}
TEXT = "How do I bake bread?"
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}


def _interpreter(reader: str) -> Path:
    python = READERS[reader][0]
    if not python.is_file():
        pytest.fail(f"{python} is missing: run `make readers` (it builds the reader environments)")
    return python


def _run(reader: str, directory: Path, ids: list[list[int]], tmp: Path, *extra: str) -> tuple[np.ndarray, dict]:
    python, script = _interpreter(reader), READERS[reader][1]
    out = tmp / f"{reader}-{directory.name}.npy"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [str(python), str(script), str(directory), json.dumps(ids), str(out), *extra]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode < 0 and reader == "vllm":
        # vLLM's CPU engine now and then aborts while starting its worker ("terminate called without an active
        # exception", SIGABRT) before it has read anything; one more start has always gone through
        print(f"\nvLLM aborted with signal {-proc.returncode}; starting it once more", file=sys.stderr)
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("READER-RESULT ")]
    info = json.loads(line.removeprefix("READER-RESULT "))
    return np.load(out), info


def _tiny(directory: Path, *, rope_theta: float, rope_scaling: dict | None, legacy: bool) -> Path:
    """head_dim 32 (vLLM's CPU attention has no kernel for 16)."""
    save_model(llama_config(num_attention_heads=2, num_key_value_heads=1), directory)
    if legacy:
        return as_transformers4_layout(directory, rope_theta=rope_theta, rope_scaling=rope_scaling)
    config = json.loads((directory / "config.json").read_text())
    config["rope_parameters"] = {"rope_theta": rope_theta, **(rope_scaling or {"rope_type": "default"})}
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


@pytest.fixture(scope="module")
def bakes(tmp_path_factory, prompt_files) -> dict[str, dict[str, Any]]:
    """name -> {source, output, k, ids}: SmolLM2 from the shipped GGUF, and tiny Llamas with Llama 3 scaling
    (rope base 500000), YaRN scaling and a transformers 5-only layout."""
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("readers")
    opts = {"positive": prompt_files[0], "negative": prompt_files[1]}
    sources = {
        "llama3-rope500000 (4.x layout)": _tiny(
            tmp / "llama3", rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, legacy=True
        ),
        "yarn (4.x layout)": _tiny(tmp / "yarn", rope_theta=10000.0, rope_scaling=YARN, legacy=True),
        "rope500000 (5.x layout)": _tiny(tmp / "v5", rope_theta=500000.0, rope_scaling=None, legacy=False),
        "SmolLM2-135M-Instruct (GGUF)": smollm2_gguf(),
    }
    out: dict[str, dict[str, Any]] = {}
    for index, (name, source) in enumerate(sources.items()):
        k = 0.5 if "SmolLM2" in name else 2.0
        result = convert(str(source), tmp / f"out{index}", ConvertOptions(alpha=k, **opts))
        tokenizer = AutoTokenizer.from_pretrained(result.output)
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": TEXT}], add_generation_prompt=True, return_dict=True
        )["input_ids"]
        ids = [list(chat), [1, *range(40, 60)]] if "SmolLM2" not in name else [list(chat)]
        offsets = SteeringVector.load(result.output / "steering.safetensors").offsets(result.band, k)
        out[name] = {"source": source, "output": result.output, "offsets": offsets, "ids": ids, "band": result.band}
    return out


def _hooked(bake: dict[str, Any]) -> np.ndarray:
    """The source steered by hooks, float32 (a GGUF source: its dequantized copy, as the bake saw it)."""
    from transformers import AutoModelForCausalLM

    source = Path(bake["source"])
    kwargs = {"gguf_file": source.name} if source.suffix == ".gguf" else {}
    model = AutoModelForCausalLM.from_pretrained(source.parent if kwargs else source, dtype=torch.float32, **kwargs)
    rows = []
    with torch.no_grad(), steering(model.eval(), REGISTRY["llama"], bake["offsets"]):
        for ids in bake["ids"]:
            rows.append(model(torch.tensor([ids])).logits[0].float().numpy())
    return np.concatenate(rows)


def _tokens_5(directory: Path) -> list[int]:
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(directory)(TEXT)["input_ids"])


def test_every_reader_loads_every_bake_as_the_validated_model(bakes, tmp_path: Path) -> None:
    rows = []
    for name, bake in bakes.items():
        reference = _hooked(bake)
        scale = float(np.abs(reference).max())
        tokens = _tokens_5(bake["output"])
        for reader in READERS:
            logits, info = _run(reader, bake["output"], bake["ids"], tmp_path)
            valid = ~np.isnan(logits)
            assert valid.all(), f"{reader} returned no logit for some tokens"
            diff = float(np.abs(logits - reference).max()) / scale
            top1 = float((logits.argmax(-1) == reference.argmax(-1)).mean())
            rows.append(
                {
                    "model": name,
                    "reader": reader,
                    "version": info["version"],
                    "relative_diff": diff,
                    "top1": top1,
                    "tokenizer": info["tokens"] == tokens,
                }
            )
    (ROOT / ".bench").mkdir(exist_ok=True)
    (ROOT / ".bench" / "readers.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| model | reader | version | max|Δlogit|/max|logit| | top-1 | tokenizer ids equal |", file=sys.stderr)
    for row in rows:
        print(
            f"| {row['model']} | {row['reader']} | {row['version']} | {row['relative_diff']:.3g} | {row['top1']:.3f} "
            f"| {row['tokenizer']} |",
            file=sys.stderr,
        )
    for row in rows:
        assert row["tokenizer"], row
        assert row["top1"] == 1.0, row
        recorded = next(r for r in READER_RUNS if r.key == row["reader"])
        assert row["relative_diff"] <= recorded.max_relative_diff, row
        assert row["version"] == recorded.version, row


def test_the_demo_output_generates_the_same_tokens_in_transformers_4_and_5(bakes, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    bake = bakes["SmolLM2-135M-Instruct (GGUF)"]
    _, info = _run("transformers4", bake["output"], bake["ids"], tmp_path, "--generate", "32")
    model = AutoModelForCausalLM.from_pretrained(bake["output"], dtype=torch.float32).eval()
    with torch.no_grad():
        tokens = model.generate(
            torch.tensor(bake["ids"][:1]), do_sample=False, max_new_tokens=32, min_new_tokens=32, pad_token_id=2
        )[0, len(bake["ids"][0]) :].tolist()
    assert info["generated"] == tokens
    print(f"\ntransformers {info['version']} and 5 generate the same 32 tokens: {tokens}", file=sys.stderr)


def test_the_transformers4_table_matches_transformers4(tmp_path: Path) -> None:
    """bakesteer/architectures/transformers4.py is what transformers 4.57.6 reads by default."""
    python = _interpreter("transformers4")
    proc = subprocess.run(
        [str(python), str(HERE / "tf4_defaults.py"), *sorted(transformers4.DEFAULTS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout)
    for family, fields in measured.items():
        fields = {k: v for k, v in fields.items() if not isinstance(v, list)}
        assert fields == dict(transformers4.DEFAULTS[family]), family
