"""bakesteer.json through one reader (issue 16): the typed record, "not a bakesteer output" decided once, and the
atomic writer that leaves nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bakesteer import ConvertOptions, convert
from bakesteer.errors import NotAnOutputError
from bakesteer.record import RECORD_FILE, VECTOR_FILE, Record, atomic_path, read_output, write_json


@pytest.fixture(scope="module")
def baked(llama_dir: Path, prompt_files, tmp_path_factory: pytest.TempPathFactory) -> Path:
    options = ConvertOptions(
        alpha=-0.75, layers="1-3", positive=prompt_files[0], negative=prompt_files[1], probes=2, greedy_tokens=4
    )
    return convert(str(llama_dir), tmp_path_factory.mktemp("record") / "out", options).output


def test_record_reads_what_convert_wrote_and_writes_the_same_bytes(baked: Path) -> None:
    text = (baked / RECORD_FILE).read_text(encoding="utf-8")
    out = read_output(baked)
    record = out.record
    assert record.to_json() == text  # read and written again: the same bytes
    raw = json.loads(text)
    assert record.k == -0.75
    assert record.band == (1, 4)
    assert record.num_layers == 5
    assert record.dtype == raw["output"]["dtype"] == "float32"
    assert record.model_type == "llama" and record.strategy == "native_flag"
    assert record.passed is True
    assert record.fingerprint == raw["fingerprint"] and len(record.fingerprint) == 64
    assert record.files == {p.name for p in baked.iterdir() if p.is_file()}
    assert record.chat_template is True
    assert out.vector_path == baked / VECTOR_FILE


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("no-directory", "no such directory"),
        ("no-record", "no bakesteer.json"),
        ("not-json", "bakesteer.json is not valid JSON"),
        ("not-object", "bakesteer.json is not a JSON object"),
        ("no-section", "bakesteer.json has no 'method' section"),
        ("no-vector", "no steering.safetensors"),
    ],
)
def test_not_an_output_is_decided_in_one_place(baked: Path, tmp_path: Path, damage: str, reason: str) -> None:
    import shutil

    target = tmp_path / "copy"
    if damage != "no-directory":
        shutil.copytree(baked, target)
    record = target / RECORD_FILE
    if damage == "no-record":
        record.unlink()
    elif damage == "not-json":
        record.write_text(record.read_text()[:40])
    elif damage == "not-object":
        record.write_text("[1, 2]\n")
    elif damage == "no-section":
        data = json.loads(record.read_text())
        del data["method"]
        record.write_text(json.dumps(data))
    elif damage == "no-vector":
        (target / VECTOR_FILE).unlink()
    with pytest.raises(NotAnOutputError) as err:
        read_output(target)
    assert err.value.where == "copy"
    assert str(err.value).startswith(f"copy is not a bakesteer output ({reason}")
    assert "bakesteer convert" in err.value.hint
    if damage == "no-vector":  # pushing needs no vector
        assert read_output(target, vector=False).record.k == -0.75


def test_atomic_writer_leaves_the_old_file_or_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_json(path, {"b": 1, "a": 2})
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    write_json(path, {"b": 1, "a": 2}, sort_keys=False)
    assert path.read_text() == '{\n  "b": 1,\n  "a": 2\n}\n'
    with pytest.raises(RuntimeError), atomic_path(path) as partial:
        partial.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == '{\n  "b": 1,\n  "a": 2\n}\n'  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no partial left


def test_record_from_hub_text_names_where_it_came_from() -> None:
    with pytest.raises(NotAnOutputError, match=r"^me/x@abc is not a bakesteer output \(bakesteer.json is not valid"):
        Record.from_json("{", where="me/x@abc")
