"""Shared fixtures: tiny config-built models saved to disk, small prompt files. No network."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).parent))

from fixtures import llama_config, save_model
from hub_server import TOKEN, HubServer

from bakesteer.progress import set_progress_bars

set_progress_bars(False)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def llama_dir(models_dir: Path) -> Path:
    """Tiny Llama, untied embeddings, float32, one safetensors file."""
    return save_model(llama_config(), models_dir / "llama")


@pytest.fixture(scope="session")
def llama_tied_dir(models_dir: Path) -> Path:
    """Tiny Llama with tied embeddings (like SmolLM2 and Llama 3.2)."""
    return save_model(llama_config(tie_word_embeddings=True), models_dir / "llama-tied", seed=1)


@pytest.fixture(scope="session")
def llama_sharded_dir(models_dir: Path) -> Path:
    """Tiny Llama saved in several shards with an index."""
    return save_model(llama_config(), models_dir / "llama-sharded", max_shard_size="60KB", seed=2)


@pytest.fixture(scope="session")
def prompt_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Small positive/negative .txt sets (12 prompts each) drawn from the shipped defaults, for fast calibration."""
    from fixtures import write_prompt_files

    return write_prompt_files(tmp_path_factory.mktemp("prompts"))


def use_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str, cache: Path) -> None:
    """Point the real huggingface_hub client at ``endpoint`` (online, no Xet, a private cache, a valid token)."""
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(c, "ENDPOINT", endpoint)
    monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    """A Hub-compatible server on 127.0.0.1 that the real huggingface_hub client talks to (online, no Xet, a
    private cache), with a valid ``HF_TOKEN``."""
    with HubServer() as server:
        use_endpoint(monkeypatch, server.endpoint, tmp_path / "cache")
        yield server
        assert server.state.crashed or not server.state.errors, server.state.errors[0]
