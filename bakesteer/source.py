"""Resolving MODEL (Hub id, local directory or ``.gguf`` file) and loading it.

Only safetensors and GGUF are read; a pickle checkpoint (``.bin``, ``.pt``) can run code on load and is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from bakesteer.dtypes import DTYPES, FLOAT_CODES
from bakesteer.errors import ModelNotFoundError, OptionError, UnsupportedCheckpointError

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: Files fetched from the Hub: configs, tokenizer files, chat templates and safetensors weights; never pickles.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.tiktoken", "tokenizer*", "README.md"]


@dataclass(frozen=True)
class ModelSource:
    """Where the weights are.

    Attributes:
        kind: ``hub``, ``local`` or ``gguf``.
        model_id: The Hub id, or the directory's or file's base name (never a full local path).
        revision: The resolved Hub commit, the SHA-256 of a GGUF file, or for a local directory ``sha256:`` and a
            digest of its weights, configs and tokenizer files (see :func:`directory_digest`).
        directory: The local directory holding the files.
        gguf_file: The GGUF file name inside ``directory``.
        weight_files: Safetensors files, as transformers would read them (one file, or the index's shards).
        index_file: The index file name when the weights are sharded.
        quantization: A GGUF file's type (``Q4_1``, ``Q8_0``, ``F16``...), else ``None``.
    """

    kind: Literal["hub", "local", "gguf"]
    model_id: str
    revision: str | None
    directory: Path
    gguf_file: str | None = None
    weight_files: tuple[str, ...] = ()
    index_file: str | None = None
    quantization: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready record for ``bakesteer.json`` (for a GGUF source, ``model_id`` is the file name and
        ``quantization`` its file type, e.g. ``Q4_1``)."""
        out: dict[str, Any] = {"kind": self.kind, "model_id": self.model_id, "revision": self.revision}
        if self.quantization is not None:
            out["quantization"] = self.quantization
        return out


_FILE_TYPE_PREFIX = "MOSTLY_"


def gguf_file_type(path: Path) -> str:
    """The quantization of a GGUF file as llama.cpp names it (``Q4_1``, ``Q8_0``, ``F16``, ...): its
    ``general.file_type``, or the most common tensor type when the field is absent."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("general.file_type")
    if field is not None and field.data:
        try:
            name = gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name
            return name.removeprefix(_FILE_TYPE_PREFIX).removeprefix("ALL_")  # MOSTLY_Q4_1 -> Q4_1, ALL_F32 -> F32
        except ValueError:
            pass
    counts = Counter(t.tensor_type.name for t in reader.tensors)
    return counts.most_common(1)[0][0] if counts else "unknown"


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 4 MiB chunks.

    Remembered for the process, keyed on the file's identity and modification (device, inode, size, mtime): one
    ``publish`` resolves the same source for its plan, its calibration and every alpha, and a model's weights are
    read once, not once per resolve.
    """
    st = Path(path).stat()
    return _sha256_of(str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _sha256_of(path: str, device: int, inode: int, size: int, mtime_ns: int) -> str:
    return sha256_contents(Path(path))


def sha256_contents(path: Path) -> str:
    """SHA-256 of a file, read now (no cache: ``verify`` must see a file changed within the same clock tick)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: Small files of a model directory that shape a conversion (configs, tokenizer, chat template), hashed with weights.
_IDENTITY_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")


def directory_digest(directory: Path, weight_files: tuple[str, ...]) -> str:
    """``sha256:<hex>`` over the names and SHA-256 of a local model's weights and its small config/tokenizer files.

    Two directories with the same digest convert to the same checkpoint; a changed weight, config or tokenizer
    changes it. Other files (a README, pickles that are never read) are left out.
    """
    names = set(weight_files) | {
        p.name
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IDENTITY_SUFFIXES
    }
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(f"{name}\0{sha256_file(directory / name)}\n".encode())
    return "sha256:" + digest.hexdigest()


def find_weights(directory: Path, model: str) -> tuple[tuple[str, ...], str | None]:
    """The safetensors files transformers would load from ``directory``, and the index file if any.

    Like transformers, a ``model.safetensors`` wins over an index beside it.

    Raises:
        UnsupportedCheckpointError: only pickle weights, only GGUF files, or no weights at all.
    """
    if (directory / SINGLE_FILE).is_file():
        return (SINGLE_FILE,), None
    if (directory / INDEX_FILE).is_file():
        from bakesteer.checkfiles import read_json

        index = read_json(directory / INDEX_FILE, model)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise UnsupportedCheckpointError(
                model, reason=f"{INDEX_FILE} has no weight_map", hint=f"download {INDEX_FILE} again"
            )
        shards = tuple(sorted(set(weight_map.values())))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise UnsupportedCheckpointError(
                model, reason=f"the index names missing shard(s) {', '.join(missing)}", hint="download every shard"
            )
        return shards, INDEX_FILE
    names = [p.name for p in directory.iterdir()]
    if any(n.endswith(PICKLE_SUFFIXES) for n in names):
        raise UnsupportedCheckpointError(
            model,
            reason="only pickle weights (.bin/.pt), which can run code when loaded",
            hint="convert it to safetensors first (e.g. load it and call save_pretrained) or pick a repo that has them",
        )
    ggufs = sorted(n for n in names if n.endswith(".gguf"))
    if ggufs:
        raise UnsupportedCheckpointError(
            model, reason="holds GGUF files but no safetensors", hint=f"pass the .gguf file itself, e.g. {ggufs[0]}"
        )
    raise UnsupportedCheckpointError(model, reason="no model.safetensors or index", hint="pass a model directory")


@contextmanager
def _hub_errors(model: str, revision: str | None) -> Iterator[None]:
    """Map the Hub client's lookup errors to one :class:`ModelNotFoundError` each."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except HFValidationError:
        raise ModelNotFoundError(model, reason="not a local path and not a valid Hub id") from None
    except GatedRepoError:
        raise ModelNotFoundError(
            model, reason="gated repository", hint="accept its terms on the Hub and log in (`hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(
            model, reason=f"revision {revision!r} not found", hint="pass an existing branch, tag or commit"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(model, reason="no such repository on the Hub (or it is private)") from None
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(model, reason="not in the local cache and the Hub is offline") from None
    except HfHubHTTPError as err:
        raise ModelNotFoundError(model, reason=f"the Hub answered {err.response.status_code}") from None
    except Exception as err:
        from bakesteer.hubnet import http_status, network_cause, network_error

        status = http_status(err)
        if status is not None:
            raise ModelNotFoundError(model, reason=f"the Hub answered {status}") from None
        cause = network_cause(err)
        if cause is None:
            raise
        raise network_error(model, cause, action="download") from None


def _resolve_hub(model: str, revision: str | None) -> ModelSource:
    from huggingface_hub import snapshot_download

    from bakesteer.hubnet import ensure_timeout

    ensure_timeout()
    with _hub_errors(model, revision):
        path = Path(snapshot_download(model, revision=revision, allow_patterns=HUB_PATTERNS))
    # snapshot_download returns .../snapshots/<commit>: the resolved revision.
    source = ModelSource("hub", model, path.name, path, *_weights(path, model))
    check_source_files(source)
    return source


def is_path(model: str) -> bool:
    """Whether ``model`` names a local directory or file rather than a Hub id."""
    path = Path(model).expanduser()
    return path.exists() or model.endswith(".gguf") or model.startswith((".", "/", "~")) or model.count("/") > 1


def source_identity(model: str, *, revision: str | None = None) -> dict[str, Any]:
    """``ModelSource.describe()`` of MODEL, without downloading a Hub model: for a Hub id the revision is resolved to
    its commit with one metadata call (from the local cache when ``HF_HUB_OFFLINE`` is set); local directories and
    GGUF files are hashed. Converting with ``revision=identity["revision"]`` then reads exactly these weights.

    Raises:
        ModelNotFoundError: as :func:`resolve_source`.
    """
    from huggingface_hub import constants

    if is_path(model) or constants.HF_HUB_OFFLINE:
        return resolve_source(model, revision=revision).describe()
    from huggingface_hub import HfApi

    from bakesteer.hubnet import ensure_timeout

    ensure_timeout()
    with _hub_errors(model, revision):
        sha = HfApi().model_info(model, revision=revision).sha
    return {"kind": "hub", "model_id": model, "revision": sha}


def _weights(directory: Path, model: str) -> tuple[None, tuple[str, ...], str | None]:
    files, index = find_weights(directory, model)
    return None, files, index


def resolve_source(model: str, *, revision: str | None = None) -> ModelSource:
    """Resolve MODEL to local files.

    Args:
        model: A local directory with ``config.json``, a ``.gguf`` file, or a Hub id.
        revision: Hub branch, tag or commit (Hub ids only).

    Raises:
        ModelNotFoundError: nothing at that path or id.
        UnsupportedCheckpointError: found, but not readable (pickle-only, no weights).
    """
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UnsupportedCheckpointError(
                path.name,
                reason="a single file that is not .gguf",
                hint="pass a model directory, a Hub id or a .gguf file",
            )
        from bakesteer.checkfiles import check_gguf

        check_gguf(path, path.name)
        return ModelSource(
            "gguf", path.name, sha256_file(path), path.parent, gguf_file=path.name, quantization=gguf_file_type(path)
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(path.name, reason="the directory has no config.json")
        _, files, index = _weights(path, path.name)
        source = ModelSource("local", path.resolve().name, "", path, None, files, index)
        check_source_files(source)
        return dataclasses.replace(source, revision=directory_digest(path, files))
    if is_path(model):
        raise ModelNotFoundError(model, reason="no such file or directory")
    return _resolve_hub(model, revision)


def check_source_files(source: ModelSource) -> None:
    """Name a damaged config, tokenizer, generation config or safetensors file before anything is loaded.

    Raises:
        UnsupportedCheckpointError: see :mod:`bakesteer.checkfiles`.
    """
    from bakesteer.checkfiles import check_config, check_safetensors, check_small_files

    check_config(source.directory, source.model_id)
    check_small_files(source.directory, source.model_id)
    for name in source.weight_files:
        check_safetensors(source.directory / name, source.model_id)


def weight_keys(source: ModelSource) -> list[str]:
    """Every tensor name of a safetensors source, read from the file headers (empty for GGUF)."""
    from bakesteer.checkfiles import check_safetensors

    return [key for name in source.weight_files for key in check_safetensors(source.directory / name, source.model_id)]


def load_config(source: ModelSource) -> Any:
    """The parsed transformers config (``AutoConfig``: some families rewrite fields while parsing)."""
    from transformers import AutoConfig

    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    config = AutoConfig.from_pretrained(source.directory, **kwargs)
    if getattr(config, "quantization_config", None):
        raise UnsupportedCheckpointError(
            source.model_id,
            reason="the checkpoint is quantized",
            hint="pass the unquantized model (a baked bias must be added to full-precision weights)",
        )
    return config


def checkpoint_dtype(source: ModelSource) -> torch.dtype:
    """The dtype most floating tensors of the checkpoint are stored in (float32 for GGUF, which is dequantized)."""
    if source.gguf_file:
        return torch.float32
    from safetensors import safe_open

    counts: Counter[torch.dtype] = Counter()
    with safe_open(str(source.directory / source.weight_files[0]), framework="pt") as handle:
        for key in handle.keys():
            dtype = handle.get_slice(key).get_dtype()
            torch_dtype = FLOAT_CODES.get(dtype)
            if torch_dtype is not None:
                counts[torch_dtype] += 1
    return counts.most_common(1)[0][0] if counts else torch.float32


def resolve_dtype(name: str, source: ModelSource) -> torch.dtype:
    """``auto`` means the checkpoint's dtype; otherwise the named one."""
    if name == "auto":
        return checkpoint_dtype(source)
    if name not in DTYPES:
        raise OptionError("--dtype", name, reason="unknown dtype", hint=f"use auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]
