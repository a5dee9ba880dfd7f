"""The output's small files: the source's own ``config.json``, generation config and tokenizer files, edited as JSON.

A downloader may read the output with transformers 4 or 5, mlx-lm, vLLM or llama.cpp's converter. Re-serialising the
config through transformers 5 objects moves the rope fields into ``rope_parameters``, which transformers 4 and mlx-lm
do not read (they silently use rope base 10000), and names tokenizer classes transformers 4 lacks. So:

- a source's ``config.json`` keeps its bytes' layout (key order, indentation) and changes only the keys the bake
  needs (the bias switch and the dtype), see :func:`edit_config`;
- a config bakesteer builds (a remap's target family, a dequantized GGUF) carries both layouts, ``rope_parameters``
  and top-level ``rope_theta`` / ``rope_scaling``, ``dtype`` and ``torch_dtype`` (:func:`portable_updates`);
- tokenizer and generation files are copied byte for byte (:func:`copy_small_files`);
- after the reload, :func:`reader_mismatches` reads ``config.json`` as transformers 4 would and compares the rope,
  norm and vocabulary fields with what transformers 5 validated.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bakesteer.architectures import transformers4

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
#: Tokenizer files other than ``tokenizer*``: vocabularies, merges, special tokens and chat templates.
_TOKENIZER_NAMES = frozenset(
    {
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
    }
)
_TOKENIZER_SUFFIXES = (".model", ".tiktoken")
#: Rope parameters that are not scaling parameters (transformers 4 keeps them at the top level).
_ROPE_TOP_LEVEL = ("rope_theta", "partial_rotary_factor")
#: Fields that only say how a config was saved, not what the model computes.
_DTYPE_KEYS = ("dtype", "torch_dtype")


def is_tokenizer_file(name: str) -> bool:
    """Whether a file of a model directory belongs to its tokenizer (or chat template)."""
    return name.startswith("tokenizer") or name in _TOKENIZER_NAMES or name.endswith(_TOKENIZER_SUFFIXES)


def small_files(directory: Path) -> list[str]:
    """The generation config and tokenizer files of a model directory, sorted."""
    return sorted(
        p.name
        for p in Path(directory).iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and (p.name == GENERATION_CONFIG_FILE or is_tokenizer_file(p.name))
    )


def copy_small_files(source: Path, out: Path) -> list[str]:
    """Copy the source's generation config and tokenizer files into ``out`` byte for byte (a Hub snapshot's links
    are followed). Returns the names copied."""
    names = small_files(source)
    for name in names:
        shutil.copyfile(Path(source) / name, Path(out) / name)
    return names


# --------------------------------------------------------------------------- JSON, edited in the source's layout


def _layout(text: str) -> dict[str, Any]:
    """How a JSON file was written: indentation, key order, ASCII escaping, trailing newline."""
    indent: int | None = None
    for line in text.splitlines()[1:]:
        stripped = line.lstrip(" ")
        if stripped and len(stripped) < len(line):
            indent = len(line) - len(stripped)
            break
    data = json.loads(text)
    keys = list(data) if isinstance(data, dict) else []
    return {
        "indent": indent,
        "sort_keys": keys == sorted(keys),
        "ensure_ascii": text.isascii(),
        "newline": text.endswith("\n"),
    }


def dump_like(data: Mapping[str, Any], text: str) -> str:
    """``data`` as JSON written the way ``text`` was (indentation, sorted keys or not, escaping, final newline)."""
    layout = _layout(text)
    out = json.dumps(data, indent=layout["indent"], sort_keys=layout["sort_keys"], ensure_ascii=layout["ensure_ascii"])
    return out + ("\n" if layout["newline"] else "")


def edit_json(path: Path, updates: Mapping[str, Any], *, out: Path | None = None) -> dict[str, Any]:
    """Set ``updates`` in the JSON object at ``path`` (written to ``out``, default in place), keeping its layout:
    keys that exist keep their place, new keys go last (or in order, when the file's keys were sorted).

    Returns:
        The edited object.
    """
    text = Path(path).read_text(encoding="utf-8")
    data = json.loads(text)
    data.update(updates)
    Path(out or path).write_text(dump_like(data, text), encoding="utf-8")
    return dict(data)


# --------------------------------------------------------------------------- what each transformers reads


def dtype_updates(raw: Mapping[str, Any], dtype_name: str, *, both: bool = False) -> dict[str, Any]:
    """The dtype keys to write: those the config has (``dtype``, ``torch_dtype``), or both when it has neither or
    ``both`` is set."""
    present = [key for key in _DTYPE_KEYS if key in raw]
    return dict.fromkeys(_DTYPE_KEYS if both or not present else present, dtype_name)


def _rope_of_5(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """The flat ``rope_parameters`` of a transformers 5 layout (``None`` when absent or nested per layer type with
    different values)."""
    rope = raw.get("rope_parameters")
    if not isinstance(rope, dict) or not rope:
        return None
    if all(isinstance(v, dict) for v in rope.values()):  # nested per layer type: one layout only if all agree
        values = list(rope.values())
        return dict(values[0]) if all(v == values[0] for v in values) else None
    return dict(rope)


def legacy_rope(rope: Mapping[str, Any], model_type: str) -> dict[str, Any]:
    """The top-level keys transformers 4 reads for ``rope`` (a transformers 5 ``rope_parameters`` dict)."""
    aliases = transformers4.ALIASES.get(model_type, {})
    out: dict[str, Any] = {}
    for key in _ROPE_TOP_LEVEL:
        if key in rope:
            out[aliases.get(key, key)] = rope[key]
            if key in aliases:  # transformers 5 reads the plain name; keep both in step
                out[key] = rope[key]
    scaling = {k: v for k, v in rope.items() if k not in _ROPE_TOP_LEVEL}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    out["rope_scaling"] = None if kind == "default" else scaling
    return out


def portable_updates(raw: Mapping[str, Any], *, always: bool) -> dict[str, Any]:
    """Keys to add so that transformers 4 reads ``raw`` (a config.json object) as transformers 5 does.

    Args:
        raw: The config as written.
        always: Write both rope layouts and both dtype keys even where transformers 4's defaults would agree (configs
            bakesteer builds); otherwise only keys absent from ``raw`` that transformers 4 would read differently.
    """
    model_type = str(raw.get("model_type", ""))
    rope = _rope_of_5(raw)
    updates: dict[str, Any] = {}
    if rope is not None:
        legacy = legacy_rope(rope, model_type)
        if always:
            updates.update({k: v for k, v in legacy.items() if k not in raw or raw[k] != v})
        else:
            reading = transformers4_reading({**raw}, model_type) or {}
            for key, value in legacy.items():
                if key not in raw and key in reading and not _same(reading[key], value, key):
                    updates[key] = value
    if always:
        dtype = raw.get("dtype", raw.get("torch_dtype"))
        if dtype is not None:
            updates.update({k: v for k, v in dtype_updates(raw, str(dtype), both=True).items() if raw.get(k) != v})
    return updates


def _same(a: Any, b: Any, key: str) -> bool:
    if key == "rope_scaling":
        return _scaling(a) == _scaling(b)
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return bool(a == b)


def _scaling(value: Any) -> dict[str, Any]:
    if not value:
        return {"rope_type": "default"}
    out = {k: v for k, v in dict(value).items() if k not in ("type", *_ROPE_TOP_LEVEL)}
    out["rope_type"] = value.get("rope_type", value.get("type", "default"))
    if out["rope_type"] == "default":
        return {"rope_type": "default"}
    return {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in out.items()}


def transformers4_reading(raw: Mapping[str, Any], model_type: str) -> dict[str, Any] | None:
    """The checked fields as transformers 4 reads them from ``raw`` (``None``: transformers 4 lacks the family)."""
    defaults = transformers4.DEFAULTS.get(model_type)
    if defaults is None:
        return None
    reading = {key: raw.get(key, default) for key, default in defaults.items()}
    for key, alias in transformers4.ALIASES.get(model_type, {}).items():
        reading[key] = raw.get(alias, defaults[alias])
    return reading


def transformers5_reading(config: Any, keys: list[str]) -> dict[str, Any]:
    """The same fields as a loaded transformers 5 config holds them (rope fields from ``rope_parameters``)."""
    rope = _rope_of_5({"rope_parameters": getattr(config, "rope_parameters", None)}) or {}
    out: dict[str, Any] = {}
    for key in keys:
        if key == "rope_scaling":
            out[key] = {k: v for k, v in rope.items() if k not in _ROPE_TOP_LEVEL} or None
        elif key in _ROPE_TOP_LEVEL and key in rope:
            out[key] = rope[key]
        elif hasattr(config, key):
            out[key] = getattr(config, key)
    return out


def reader_mismatches(raw: Mapping[str, Any], config: Any) -> list[str]:
    """Fields of ``raw`` (config.json) that transformers 4 reads differently from ``config`` (the transformers 5
    config the checkpoint was validated with), as ``"field: transformers 4 reads X, validated with Y"``."""
    model_type = str(raw.get("model_type", ""))
    reading = transformers4_reading(raw, model_type)
    if reading is None:
        return []
    aliases = transformers4.ALIASES.get(model_type, {})
    keys = [k for k in reading if k not in aliases.values()]
    validated = transformers5_reading(config, keys)
    problems = []
    for key in keys:
        if key not in validated:
            continue
        old, new = reading[key], validated[key]
        if key == "rope_scaling":
            new = _fill_original_max(new, raw)
            old = _fill_original_max(old, raw)
        if not _same(old, new, key):
            problems.append(f"{key}: transformers 4 reads {old!r}, the model was validated with {new!r}")
    return problems


def _fill_original_max(scaling: Any, raw: Mapping[str, Any]) -> Any:
    """Both transformers fall back to ``max_position_embeddings`` for a scaled rope's pretraining length."""
    if not scaling or _scaling(scaling)["rope_type"] not in ("llama3", "yarn", "longrope"):
        return scaling
    filled = dict(scaling)
    fallback = raw.get("original_max_position_embeddings", raw.get("max_position_embeddings"))
    filled.setdefault("original_max_position_embeddings", fallback)
    return filled


def tokenizer_class_for_4(directory: Path) -> str | None:
    """Rewrite a ``tokenizer_config.json`` that names a class only transformers 5 has (``TokenizersBackend``) to
    one transformers 4 loads the same ``tokenizer.json`` with. Returns the class now named (``None``: no config)."""
    path = Path(directory) / TOKENIZER_CONFIG_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    name = data.get("tokenizer_class")
    if name in transformers4.TOKENIZER_CLASSES_ONLY_IN_5 and (Path(directory) / "tokenizer.json").is_file():
        edit_json(path, {"tokenizer_class": transformers4.TOKENIZER_CLASS_FOR_4})
        return transformers4.TOKENIZER_CLASS_FOR_4
    return name
