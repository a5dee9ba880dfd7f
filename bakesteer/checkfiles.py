"""Damaged and incomplete inputs, named before any work: the way safetensors refuses a bad header before reading data.

Every check reads headers and small files only (never tensor data), and raises
:class:`~bakesteer.errors.UnsupportedCheckpointError` naming the file, what is wrong with it, and the fix.
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bakesteer.errors import UnsupportedCheckpointError

#: safetensors refuses headers above 100 MB (``MAX_HEADER_SIZE`` in the safetensors crate).
MAX_HEADER_BYTES = 100_000_000
_REDOWNLOAD = "download or copy {name} again from the model's source (it looks cut short or damaged)"
#: Small JSON files whose damage would surface deep inside a load.
SMALL_JSON = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def _damaged(model: str, name: str, reason: str, hint: str | None = None) -> UnsupportedCheckpointError:
    return UnsupportedCheckpointError(model, reason=f"{name} {reason}", hint=hint or _REDOWNLOAD.format(name=name))


def read_json(path: Path, model: str) -> Any:
    """Parse a JSON file of a model.

    Raises:
        UnsupportedCheckpointError: it is not valid JSON (with the line and column).
    """
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise _damaged(model, path.name, "is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        reason = f"is not valid JSON ({err.msg}: line {err.lineno}, column {err.colno})"
        raise _damaged(model, path.name, reason) from None


def check_config(directory: Path, model: str) -> dict[str, Any]:
    """``config.json``: JSON, an object, a ``model_type`` that this transformers knows.

    Raises:
        UnsupportedCheckpointError: any of these fails.
    """
    from transformers import CONFIG_MAPPING
    from transformers import __version__ as version

    raw = read_json(directory / "config.json", model)
    if not isinstance(raw, dict):
        raise _damaged(model, "config.json", f"is a JSON {type(raw).__name__}, not an object")
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise _damaged(
            model, "config.json", "has no model_type", hint='add the family\'s model_type (e.g. "llama") to it'
        )
    if model_type not in CONFIG_MAPPING:
        raise _damaged(
            model,
            "config.json",
            f"names model_type {model_type!r}, which transformers {version} does not know",
            hint="check the model_type for a typo, or install a transformers that has the family",
        )
    return raw


def check_small_files(directory: Path, model: str) -> None:
    """Every small JSON file a load reads (generation config, tokenizer files) parses, and a tokenizer is there.

    Raises:
        UnsupportedCheckpointError: a file is not JSON, or no tokenizer file exists.
    """
    for name in SMALL_JSON[1:]:
        if (directory / name).is_file():
            read_json(directory / name, model)
    from bakesteer.configfiles import is_tokenizer_file

    if not any(is_tokenizer_file(p.name) for p in directory.iterdir() if p.is_file()):
        raise UnsupportedCheckpointError(
            model,
            reason="it has no tokenizer files (tokenizer.json, tokenizer_config.json, ...)",
            hint="copy the tokenizer files from the model's source into the directory",
        )


def check_safetensors(path: Path, model: str) -> list[str]:
    """A safetensors file's header, checked as safetensors would before reading data.

    Returns:
        The tensor names it holds.

    Raises:
        UnsupportedCheckpointError: truncated, a corrupt header, or data shorter than the header says.
    """
    size = path.stat().st_size
    name = path.name
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise _damaged(model, name, f"is truncated ({size} bytes, not even a header)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or length > size - 8:
            raise _damaged(
                model, name, f"has a corrupt header (it claims {length} header bytes; the file has {size - 8})"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _damaged(model, name, "has a corrupt header (not JSON)") from None
    if not isinstance(header, dict):
        raise _damaged(model, name, "has a corrupt header (not a JSON object)")
    data = size - 8 - length
    try:
        ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
    except (KeyError, TypeError, IndexError, ValueError):
        raise _damaged(model, name, "has a corrupt header (a tensor entry without data_offsets)") from None
    needed = max(ends, default=0)
    if needed > data:
        raise _damaged(model, name, f"is truncated: its header describes {needed} bytes of data, it holds {data}")
    return [key for key in header if key != "__metadata__"]


def check_gguf(path: Path, model: str) -> None:
    """A GGUF file: its magic, a header gguf can read, tensor data inside the file, and tensor types that can be
    dequantized.

    Raises:
        UnsupportedCheckpointError: not GGUF, damaged or truncated, or an unsupported tensor type.
    """
    import gguf
    import gguf.quants

    name = path.name
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise _damaged(
            model, name, f"is not a GGUF file (it starts with {magic!r}, not b'GGUF')", hint="pass a .gguf model file"
        )
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises whatever numpy does on a short or garbled file
        raise _damaged(model, name, f"is damaged or truncated (the GGUF reader failed: {first_line(err)})") from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        if int(tensor.data_offset) + int(tensor.n_bytes) > size:
            raise _damaged(model, name, f"is truncated: tensor {tensor.name} ends past the end of the file")
    supported = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, *gguf.quants._type_traits}
    unsupported = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type not in supported})
    if unsupported:
        raise _damaged(
            model,
            name,
            f"holds tensor type(s) {', '.join(unsupported)}, which the gguf package cannot dequantize",
            hint="pass a GGUF in a common type (F16, Q8_0, Q4_K, ...) or the safetensors model",
        )


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:160]


_BLOCK = re.compile(r"(?:^|\.)([A-Za-z_][A-Za-z0-9_]*)\.(\d+)\.")


def check_weights_fit(keys: Iterable[str], *, model: str, model_type: str, layers: str, num_layers: int) -> None:
    """The weights hold the blocks the config's family names (``layers``: the registry's module path of the blocks),
    and at least ``num_layers`` of them: a config whose ``model_type`` contradicts the weights would otherwise load
    a randomly initialised model.

    Raises:
        UnsupportedCheckpointError: the blocks are missing, or fewer than the config says.
    """
    container = layers.rsplit(".", 1)[-1]
    found: Counter[str] = Counter()
    highest: dict[str, int] = {}
    for key in keys:
        match = _BLOCK.search(key)
        if match:
            found[match.group(1)] += 1
            highest[match.group(1)] = max(highest.get(match.group(1), -1), int(match.group(2)))
    if not found:
        return  # no numbered blocks at all (an unusual layout): the load's own key check decides
    if container not in found:
        seen = found.most_common(1)[0][0]
        raise UnsupportedCheckpointError(
            model,
            reason=f"config.json says model_type {model_type!r}, whose blocks are '{container}.N', but the weights "
            f"hold '{seen}.N' blocks",
            hint="the config does not belong to these weights: restore the model's own config.json",
        )
    if highest[container] + 1 < num_layers:
        raise UnsupportedCheckpointError(
            model,
            reason=f"config.json says {num_layers} layers, the weights hold {highest[container] + 1}",
            hint="restore the model's own config.json, or download every shard",
        )
