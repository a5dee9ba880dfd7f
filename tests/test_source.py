"""Resolving MODEL: Hub ids (from a real huggingface_hub cache layout, offline), directories, GGUF files."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from bakesteer.errors import ModelNotFoundError, UnsupportedCheckpointError
from bakesteer.source import resolve_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub_cache(llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache laid out as huggingface_hub writes it: blobs are symlinked from snapshots/<commit>/, refs/main."""
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, f in enumerate(sorted(llama_dir.iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_hub_id_resolves_to_the_commit(hub_cache: Path) -> None:
    source = resolve_source("acme/tiny-llama")
    assert source.kind == "hub" and source.model_id == "acme/tiny-llama"
    assert source.revision == COMMIT
    assert source.weight_files == ("model.safetensors",)
    source = resolve_source("acme/tiny-llama", revision=COMMIT)
    assert source.revision == COMMIT


def test_hub_convert_records_the_commit(hub_cache: Path, prompt_files, tmp_path: Path) -> None:
    from bakesteer import ConvertOptions, convert

    result = convert(
        "acme/tiny-llama", tmp_path / "out", ConvertOptions(positive=prompt_files[0], negative=prompt_files[1])
    )
    assert result.metadata["base_model"] == {"kind": "hub", "model_id": "acme/tiny-llama", "revision": COMMIT}


def test_unknown_hub_id_offline(hub_cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="offline"):
        resolve_source("acme/absent")
    with pytest.raises(ModelNotFoundError, match="not a valid Hub id"):
        resolve_source("not a repo id!")


def test_directory_rules(tmp_path: Path, llama_dir: Path) -> None:
    d = tmp_path / "gguf-only"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "m.Q4.gguf").write_bytes(b"GGUF")
    with pytest.raises(UnsupportedCheckpointError, match="no safetensors") as info:
        resolve_source(str(d))
    assert "pass the .gguf file itself, e.g. m.Q4.gguf" in info.value.one_line()
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(UnsupportedCheckpointError, match=r"not \.gguf"):
        resolve_source(str(tmp_path / "weights.safetensors"))
    source = resolve_source(str(llama_dir))
    assert source.kind == "local" and source.model_id == "llama"


def _reference_digest(directory: Path, names: list[str]) -> str:
    lines = "".join(f"{n}\0{hashlib.sha256((directory / n).read_bytes()).hexdigest()}\n" for n in sorted(names))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def test_local_revision_is_a_content_digest(tmp_path: Path, llama_dir: Path) -> None:
    """A local directory's identity covers its weights, configs and tokenizer files and nothing else."""
    d = tmp_path / "copy"
    shutil.copytree(llama_dir, d)
    (d / "README.md").write_text("notes")  # not part of the identity
    (d / "training_args.bin").write_bytes(b"pickle")  # never read, not part of it either
    names = sorted(p.name for p in llama_dir.iterdir() if p.suffix in (".json", ".safetensors", ".jinja"))
    assert resolve_source(str(d)).revision == _reference_digest(d, names) == resolve_source(str(llama_dir)).revision
    (d / "generation_config.json").write_text('{"temperature": 0.5}')
    assert resolve_source(str(d)).revision == _reference_digest(d, names) != resolve_source(str(llama_dir)).revision
