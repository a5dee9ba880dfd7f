"""One table of bad inputs and damaged files (issue 19): each gives one line naming the problem and the fix, its exit
code, no traceback, and leaves every file as it was (nothing written, nothing changed, no staging left behind).

The table is generated from one list, :data:`CASES`; the workspace of damaged models is built once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bakesteer.cli import main


@dataclass(frozen=True)
class Case:
    """``args(workspace)`` is the command line; ``words`` must appear in the one error line."""

    name: str
    args: Callable[[Path], list[str]]
    words: str
    code: int = 2


def _damage(workspace: Path, name: str, edit: Callable[[Path], None]) -> Path:
    """A copy of the tiny Llama with ``edit`` applied."""
    target = workspace / name
    shutil.copytree(workspace / "llama", target)
    edit(target)
    return target


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _write_header_length(path: Path, length: int) -> None:
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", length)
    path.write_bytes(bytes(data))


def _set_config(key: str, value: object) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        config = json.loads((directory / "config.json").read_text())
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
        (directory / "config.json").write_text(json.dumps(config))

    return edit


def _sharded(directory: Path) -> None:
    """Split model.safetensors into a two-shard index (the second shard is then damaged by other edits)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(directory / "model.safetensors")
    keys = sorted(tensors)
    half = len(keys) // 2
    save_file({k: tensors[k] for k in keys[:half]}, str(directory / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in keys[half:]}, str(directory / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" if i < half else "model-00002-of-00002.safetensors"
                  for i, k in enumerate(keys)}  # fmt: skip
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "model.safetensors").unlink()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, llama_dir: Path, prompt_files) -> Path:
    from fixtures import LLAMA_LIKE, save_model
    from gguf_fixture import write_tiny_gguf
    from transformers import MistralConfig

    ws = tmp_path_factory.mktemp("bad")
    shutil.copytree(llama_dir, ws / "llama")
    shutil.copy(prompt_files[0], ws / "pos.txt")
    shutil.copy(prompt_files[1], ws / "neg.txt")
    save_model(MistralConfig(**LLAMA_LIKE, sliding_window=16), ws / "mistral-swa")
    weights = "model.safetensors"
    _damage(ws, "config-truncated", lambda d: _truncate(d / "config.json", 40))
    _damage(ws, "config-list", lambda d: (d / "config.json").write_text("[1, 2]"))
    _damage(ws, "config-no-type", _set_config("model_type", None))
    _damage(ws, "config-unknown-type", _set_config("model_type", "llamma"))
    _damage(ws, "config-gpt2", _set_config("model_type", "gpt2"))
    _damage(ws, "config-more-layers", _set_config("num_hidden_layers", 9))
    _damage(ws, "config-quantized", _set_config("quantization_config", {"quant_method": "bitsandbytes"}))
    _damage(ws, "st-truncated", lambda d: _truncate(d / weights, -1000))
    _damage(ws, "st-tiny", lambda d: (d / weights).write_bytes(b"\x01\x02"))
    _damage(ws, "st-huge-header", lambda d: _write_header_length(d / weights, 2**62))
    _damage(ws, "st-garbled-header", lambda d: (d / weights).write_bytes(struct.pack("<Q", 4) + b"{{{{" + b"0" * 64))
    _damage(ws, "index-not-json", lambda d: (_sharded(d), _truncate(d / "model.safetensors.index.json", 30)))
    _damage(ws, "index-missing-shard", lambda d: (_sharded(d), (d / "model-00002-of-00002.safetensors").unlink()))
    _damage(ws, "index-no-map", lambda d: (_sharded(d), (d / "model.safetensors.index.json").write_text("{}")))
    _damage(ws, "shard-truncated", lambda d: (_sharded(d), _truncate(d / "model-00002-of-00002.safetensors", -64)))
    _damage(ws, "no-tokenizer", lambda d: [p.unlink() for p in list(d.iterdir()) if p.name.startswith(("tok", "chat"))])
    _damage(ws, "tokenizer-truncated", lambda d: _truncate(d / "tokenizer.json", 100))
    _damage(ws, "tokenizer-class", lambda d: (d / "tokenizer.json").unlink())
    _damage(ws, "generation-not-json", lambda d: (d / "generation_config.json").write_text("{temperature: 0.5"))
    ggufs = ws / "ggufs"
    ggufs.mkdir()
    write_tiny_gguf(ggufs / "f64.gguf", norm_dtype=np.float64)
    good = write_tiny_gguf(ggufs / "tiny.gguf")
    data = good.read_bytes()
    (ggufs / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (ggufs / "header-only.gguf").write_bytes(data[:300])
    (ggufs / "random.gguf").write_bytes(bytes(range(256)) * 64)
    good.unlink()  # the directory then holds GGUF files (and a config) but no safetensors
    shutil.copy(ws / "llama" / "config.json", ggufs / "config.json")
    (ws / "pickled").mkdir()
    (ws / "pickled" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (ws / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    (ws / "no-config").mkdir()
    (ws / "weights.bin").write_bytes(b"x")
    (ws / "existing").mkdir()
    (ws / "existing" / "keep.txt").write_text("mine")
    (ws / "a-file").write_text("not a directory")
    prompts = ws / "prompts"
    prompts.mkdir()
    lines = (ws / "pos.txt").read_text().splitlines()
    (prompts / "empty.txt").write_text("")
    (prompts / "three.txt").write_text("one\ntwo\nthree\n")
    (prompts / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    (prompts / "latin1.txt").write_bytes("\n".join([*lines, "café crème"]).encode("latin-1"))
    (prompts / "prompts.pdf").write_text("\n".join(lines))
    (prompts / "bad.jsonl").write_text('{"prompt": "a"}\n{not json}\n')
    (prompts / "columns.csv").write_text("a,b\n1,2\n")
    (prompts / "long.txt").write_text("\n".join([*lines, " ".join(["word"] * 3000)]) + "\n")
    (ws / "garbage.safetensors").write_bytes(b"not a vector file at all")
    (ws / "variants-bad.toml").write_text("[[variants]\nmodel = ")
    return ws


def _c(model: str, *extra: str) -> Callable[[Path], list[str]]:
    """``convert WS/model -o WS/out --positive ... --negative ... extra``."""

    def args(ws: Path) -> list[str]:
        source = model if model.startswith(("nobody", "x/")) else str(ws / model)
        return ["convert", source, "-o", str(ws / "out"), "--positive", str(ws / "pos.txt"),
                "--negative", str(ws / "neg.txt"), *(e.replace("WS", str(ws)) for e in extra)]  # fmt: skip

    return args


def _cmd(*words: str) -> Callable[[Path], list[str]]:
    return lambda ws: [w.replace("WS", str(ws)) for w in words]


CASES: list[Case] = [
    # where the model is
    Case("missing directory", _c("nope"), "model not found"),
    Case("invalid Hub id", _c("nobody/../x"), "model not found"),
    Case("missing .gguf", _c("missing.gguf"), "no such file"),
    Case("no config.json", _c("no-config"), "no config.json"),
    Case("pickle weights only", _c("pickled"), "pickle"),
    Case("a single non-GGUF file", _c("weights.bin"), "a single file that is not .gguf"),
    Case("GGUF files but no safetensors", _c("ggufs"), "holds GGUF files but no safetensors"),
    Case("sliding window", _c("mistral-swa"), "unsupported architecture 'mistral': it uses sliding-window"),
    # damaged config.json
    Case("config.json truncated", _c("config-truncated"), "config.json is not valid JSON"),
    Case("config.json not an object", _c("config-list"), "config.json is a JSON list, not an object"),
    Case("config.json without model_type", _c("config-no-type"), "config.json has no model_type"),
    Case("unknown model_type", _c("config-unknown-type"), "names model_type 'llamma', which transformers"),
    Case("model_type contradicts the weights", _c("config-gpt2"), "whose blocks are 'h.N', but the weights hold"),
    Case("more layers than the weights", _c("config-more-layers"), "config.json says 9 layers, the weights hold 5"),
    Case("quantized checkpoint", _c("config-quantized"), "the checkpoint is quantized"),
    # damaged weights
    Case("safetensors truncated", _c("st-truncated"), "model.safetensors is truncated: its header describes"),
    Case("safetensors of 2 bytes", _c("st-tiny"), "is truncated (2 bytes, not even a header)"),
    Case("header length 2^62", _c("st-huge-header"), "has a corrupt header (it claims 4611686018427387904"),
    Case("header not JSON", _c("st-garbled-header"), "has a corrupt header (not JSON)"),
    Case("index not JSON", _c("index-not-json"), "model.safetensors.index.json is not valid JSON"),
    Case("index names a missing shard", _c("index-missing-shard"), "missing shard(s) model-00002-of-00002"),
    Case("index without weight_map", _c("index-no-map"), "has no weight_map"),
    Case("a shard truncated", _c("shard-truncated"), "model-00002-of-00002.safetensors is truncated"),
    Case("GGUF truncated", _c("ggufs/truncated.gguf"), "truncated.gguf is "),
    Case("GGUF cut inside its header", _c("ggufs/header-only.gguf"), "header-only.gguf is damaged or truncated"),
    Case("random bytes named .gguf", _c("ggufs/random.gguf"), "random.gguf is not a GGUF file"),
    Case("GGUF of a type gguf cannot dequantize", _c("ggufs/f64.gguf"), "holds tensor type(s) F64, which the gguf"),
    # tokenizer and generation config
    Case("tokenizer files deleted", _c("no-tokenizer"), "has no tokenizer files"),
    Case("tokenizer.json truncated", _c("tokenizer-truncated"), "tokenizer.json is not valid JSON"),
    Case("tokenizer does not load", _c("tokenizer-class"), "its tokenizer does not load"),
    Case("generation_config.json not JSON", _c("generation-not-json"), "generation_config.json is not valid JSON"),
    # prompt files
    Case("empty prompt file", _c("llama", "--positive", "WS/prompts/empty.txt"), "has 0 distinct"),
    Case("three prompts", _c("llama", "--negative", "WS/prompts/three.txt"), "has 3 distinct"),
    Case("missing prompt file", _c("llama", "--positive", "WS/absent.txt"), "file not found"),
    Case("binary prompt file", _c("llama", "--positive", "WS/prompts/binary.txt"), "is binary, not text"),
    Case("latin-1 prompt file", _c("llama", "--positive", "WS/prompts/latin1.txt"), "is not UTF-8 text (byte 0xe9"),
    Case("unknown prompt format", _c("llama", "--positive", "WS/prompts/prompts.pdf"), "unknown format .pdf"),
    Case("JSONL line not JSON", _c("llama", "--positive", "WS/prompts/bad.jsonl"), "line 2 is not JSON"),
    Case("CSV without a prompt column", _c("llama", "--positive", "WS/prompts/columns.csv"), "no prompt column"),
    Case(
        "prompt longer than the context",
        _c("llama", "--positive", "WS/prompts/long.txt"),
        "prompt set long.txt: the prompt starting 'word word word word word word word word ' is 9015 tokens, longer "
        "than the model's context of 256",
    ),
    # options
    Case("alpha nan", _c("llama", "--alpha", "nan"), "must be a finite number"),
    Case("alpha inf", _c("llama", "--alpha", "inf"), "must be a finite number"),
    Case("alpha too large", _c("llama", "--alpha", "100"), "sqrt(d_model)"),
    Case("layers out of range", _c("llama", "--layers", "3-9"), "out of range for a 5-layer model"),
    Case("layers reversed", _c("llama", "--layers", "0.9:0.1"), "0 <= start < end <= 1"),
    Case("layers not a band", _c("llama", "--layers", "middle"), "invalid --layers 'middle'"),
    Case("batch size 0", _c("llama", "--batch-size", "0"), "must be at least 1"),
    Case("one probe", _c("llama", "--probes", "1"), "needs one prompt from each set"),
    Case("missing vector file", _c("llama", "--vector", "WS/absent.safetensors"), "vector file"),
    Case("garbage vector file", _c("llama", "--vector", "WS/garbage.safetensors"), "vector file garbage.safetensors"),
    Case("CUDA device on a CPU machine", _c("llama", "--device", "cuda:0"), "CUDA is not available"),
    Case("--max-memory GPU that is not there", _c("llama", "--max-memory", "0=1GiB"), "GPU 0 does not exist here"),
    Case("--max-memory malformed", _c("llama", "--max-memory", "0:1GiB"), "cannot parse '0:1GiB'"),
    Case("--max-memory size unreadable", _c("llama", "--max-memory", "cpu=lots"), "cannot read the size 'lots'"),
    Case("malformed repo id", _c("llama", "--push-to-hub", "a/b/c"), "invalid --push-to-hub 'a/b/c'"),
    Case("repo id with --", _c("llama", "--push-to-hub", "me/a--b"), "Cannot have -- or .. in repo_id"),
    # where the output goes
    Case("existing output", lambda ws: [*_c("llama")(ws)[:3], str(ws / "existing")], "already exists"),
    Case("output is a file", lambda ws: [*_c("llama")(ws)[:3], str(ws / "a-file")], "a-file' is a file"),
    Case("output under a file", lambda ws: [*_c("llama")(ws)[:3], str(ws / "a-file" / "out")], "is a file, not a"),
    Case("output is the source", lambda ws: [*_c("llama")(ws)[:3], str(ws / "llama"), "--overwrite"], "is the source"),
    Case("output inside the source", lambda ws: [*_c("llama")(ws)[:3], str(ws / "llama" / "o")], "lies inside"),
    Case(
        "output contains the source", lambda ws: [*_c("llama")(ws)[:3], str(ws), "--overwrite"], "contains the source"
    ),
    Case("--report into a missing directory", _c("llama", "--report", "WS/none/r.json"), "invalid --report"),
    Case("--report is a directory", _c("llama", "--report", "WS/existing"), "existing' is a directory"),
    Case("an unknown flag", _c("llama", "--alpah", "1"), "No such option '--alpah'"),
    Case("alpha not a number", _c("llama", "--alpha", "one"), "Invalid value for '--alpha'"),
    # other commands
    Case("vector over an existing file", _cmd("vector", "WS/llama", "-o", "WS/pos.txt"), "already exists"),
    Case("vector from a damaged model", _cmd("vector", "WS/st-truncated", "-o", "WS/v.safetensors"), "truncated"),
    Case("sweep into the source", _cmd("sweep", "WS/llama", "-o", "WS/llama/s", "--alphas", "1"), "lies inside"),
    Case("eval of a plain model", _cmd("eval", "WS/llama"), "not a bakesteer output"),
    Case("export of a plain model", _cmd("export", "WS/llama", "--control-vector", "WS/cv.gguf"), "bakesteer"),
    Case("publish a missing file", _cmd("publish", "WS/absent.toml"), "variants file absent.toml"),
    Case("publish a malformed file", _cmd("publish", "WS/variants-bad.toml"), "variants file variants-bad.toml"),
    Case(
        "demo into an existing directory",
        _cmd("demo", "-o", "WS/existing"),
        "already exists (a directory that is not empty)",
    ),
]


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(directory.rglob("*"))
    }


def test_the_table_is_large_and_its_names_unique() -> None:
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, workspace: Path, record_property) -> None:
    before = snapshot(workspace)
    result = CliRunner().invoke(main, case.args(workspace))
    err = result.stderr
    assert result.exit_code == case.code, (case.args(workspace), err, result.exception)
    lines = err.strip().splitlines()
    record_property("message", err.strip().replace(str(workspace), "WS"))  # --junitxml lists every message
    assert len(lines) == 1, err
    assert lines[0].startswith("bakesteer: error: ") and case.words in lines[0], lines[0]
    assert "; " in lines[0], "the line names a fix after the problem"
    assert "`main " not in lines[0], "the command is named as users type it"
    assert "Traceback" not in err and "unexpected" not in err and result.stdout == ""
    assert ".bakesteer-" not in lines[0], "no hidden staging name in a message"
    assert snapshot(workspace) == before, "a bad input changed or left files"
