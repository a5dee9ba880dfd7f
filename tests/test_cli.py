"""Every bad input: one line naming the problem and the fix, a non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bakesteer.cli import main


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def bad_models(models_dir: Path) -> dict[str, Path]:
    import torch
    from fixtures import LLAMA_LIKE, save_model
    from transformers import MistralConfig

    # Mistral with a sliding window shorter than its context: the Llama remap would be wrong past the window
    mistral = save_model(MistralConfig(**LLAMA_LIKE, sliding_window=16), models_dir / "mistral-swa")
    pickle_only = models_dir / "pickled"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text(json.dumps({"model_type": "llama"}))
    torch.save({"w": torch.zeros(2)}, pickle_only / "pytorch_model.bin")
    no_config = models_dir / "no-config"
    no_config.mkdir()
    return {"mistral": mistral, "pickle": pickle_only, "no_config": no_config}


def _cases(llama: Path, bad: dict[str, Path], tmp: Path) -> list[tuple[list[str], str, int]]:
    empty = tmp / "empty.txt"
    empty.write_text("")
    small = tmp / "small.txt"
    small.write_text("one\ntwo\nthree\n")
    existing = tmp / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    out = str(tmp / "out")
    m = str(llama)
    return [
        ([str(tmp / "nope"), "-o", out], "model not found", 2),
        (["nobody/../x", "-o", out], "model not found", 2),
        ([str(tmp / "missing.gguf"), "-o", out], "no such file", 2),
        ([str(bad["no_config"]), "-o", out], "no config.json", 2),
        ([str(bad["pickle"]), "-o", out], "pickle", 2),
        ([str(bad["mistral"]), "-o", out], "unsupported architecture 'mistral': it uses sliding-window", 2),
        ([m, "-o", out, "--alpha", "nan"], "must be a finite number", 2),
        ([m, "-o", out, "--alpha", "inf"], "must be a finite number", 2),
        ([m, "-o", out, "--alpha", "100"], "sqrt(d_model)", 2),
        ([m, "-o", out, "--positive", str(empty)], "has 0 distinct", 2),
        ([m, "-o", out, "--negative", str(small)], "has 3 distinct", 2),
        ([m, "-o", out, "--positive", str(tmp / "absent.txt")], "file not found", 2),
        ([m, "-o", out, "--layers", "3-9"], "out of range for a 5-layer model", 2),
        ([m, "-o", out, "--layers", "0.9:0.1"], "0 <= start < end <= 1", 2),
        ([m, "-o", str(existing)], "already exists", 2),
        ([m, "-o", out, "--batch-size", "0"], "must be at least 1", 2),
        ([m, "-o", out, "--vector", str(tmp / "absent.safetensors")], "vector file", 2),
        ([m, "-o", out, "--device", "cuda:0"], "CUDA is not available", 2),
    ]


def test_bad_inputs(llama_dir: Path, bad_models: dict[str, Path], tmp_path: Path) -> None:
    for args, message, code in _cases(llama_dir, bad_models, tmp_path):
        exit_code, stdout, stderr = run("convert", *args)
        assert exit_code == code, (args, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (args, stderr)
        assert lines[0].startswith("bakesteer: error: ") and message in lines[0], (args, lines[0])
        assert "; " in lines[0], "the line names a fix after the problem"
        assert "Traceback" not in stderr and stdout == ""
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "existing" / "keep.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "existing", "small.txt"]


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "--debug"])
    assert result.exit_code != 0
    from bakesteer.errors import ModelNotFoundError

    assert isinstance(result.exception, ModelNotFoundError)


def test_convert_summary_and_quiet(llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    common = ["--positive", str(prompt_files[0]), "--negative", str(prompt_files[1])]
    code, stdout, stderr = run("convert", str(llama_dir), "-o", str(tmp_path / "a"), "--alpha", "-1", *common)
    assert code == 0, stderr
    assert "baked k=-1 into layers 2-4 (3 of 5)" in stdout
    assert "validation (float32)" in stdout and "greedy 32 tokens equal" in stdout
    code, stdout, stderr = run("convert", str(llama_dir), "-o", str(tmp_path / "b"), "--quiet", *common)
    assert code == 0 and stdout == "" and stderr == ""


def test_vector_command(llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    vec = tmp_path / "v.safetensors"
    common = ["--positive", str(prompt_files[0]), "--negative", str(prompt_files[1])]
    code, stdout, _ = run("vector", str(llama_dir), "-o", str(vec), *common)
    assert code == 0 and "5-layer vector" in stdout and vec.is_file()
    code, _, stderr = run("vector", str(llama_dir), "-o", str(vec), *common)
    assert code == 2 and "already exists" in stderr  # never overwrites a user's file silently
    code, stdout, stderr = run("convert", str(llama_dir), "-o", str(tmp_path / "o"), "--vector", str(vec), *common)
    assert code == 0, stderr


def test_console_script_help_is_light_and_errors_are_one_line(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "bakesteer"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = (
        "import sys, bakesteer.cli; sys.argv = ['bakesteer', '--help']\ntry:\n    bakesteer.cli.main()\n"
        "except SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().endswith("[]"), "bakesteer --help must not import torch or transformers"
    proc = subprocess.run(
        [str(exe), "convert", str(tmp_path / "nope"), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "model not found" in proc.stderr and "Traceback" not in proc.stderr


def test_docs_document_every_option() -> None:
    from bakesteer.options import ConvertOptions

    page = (Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text()
    for f in ConvertOptions.fields_in():
        flag = (f.metadata.get("flag") or "--" + f.name.replace("_", "-")).split("/")[0]
        assert f"`{flag}" in page, f"the options table of docs/usage.md misses {flag}"


def test_demo_report_shows_each_answer_with_its_score() -> None:
    from types import SimpleNamespace

    from bakesteer.display import demo_report

    metrics = {"kl": 0.4, "perplexity": 22.7, "fluency": 3.1, "repetition": 0.02, "concept": 1.69}
    metrics |= {"refusal_rate": {"positive": 0.0, "negative": 0.0}, "refusal_score": -1.0}
    report = SimpleNamespace(
        concept={"layer": 19},
        eval_set={"prompts": 8},
        settings={"max_new_tokens": 40},
        metrics={"base": {**metrics, "kl": 0.0, "concept": 0.76}, "model": metrics},
        alpha=0.5,
    )
    result = SimpleNamespace(report=report, answers=[("Describe the sea.", "It is grey.", 0.05, "It is lovely!", 1.73)])
    lines = demo_report(result).splitlines()
    assert "> Describe the sea." in lines
    assert "  base  [0.05]: It is grey." in lines and "  baked [1.73]: It is lovely!" in lines
    assert lines[-1].split()[:6] == ["k=0.5", "0.4", "22.7", "3.1", "0.020", "1.690"]
    assert "read by the base model at layer 19" in lines[1]
