"""Prompt sets: reading them, splitting them into calibration and held-out parts, hashing them, templating them."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bakesteer.errors import PromptSetError

#: Fewest prompts a set may have: enough for a calibration part and a held-out part of at least two each.
MIN_PROMPTS = 8
#: Share of each set held out from calibration (for validation probes), by hash rank.
HELDOUT_FRACTION = 0.2
#: Field names tried, in order, in .jsonl records and .csv headers.
TEXT_FIELDS = ("prompt", "text", "instruction")
DEFAULT_SETS = {"positive": "harmful.txt", "negative": "harmless.txt", "eval": "eval_prompts.txt"}
#: The CLI flag that names each role's file.
ROLE_FLAGS = {"positive": "--positive", "negative": "--negative", "eval": "--eval-prompts"}
#: The neutral text whose perplexity a measurement reports (written for bakesteer, about 1,100 tokens).
REFERENCE_TEXT = "reference_text.txt"

_FORMAT_HINT = (
    ".txt (one prompt a line), .jsonl (a prompt, text or instruction field), .csv (a header row), .parquet "
    "(FILE.parquet#COLUMN) or hf://datasets/OWNER/NAME[:CONFIG][/SPLIT]#COLUMN"
)


@dataclass(frozen=True)
class PromptSet:
    """A deduplicated, ordered prompt set split deterministically into calibration and held-out parts.

    Attributes:
        name: ``default:harmful.txt`` for a shipped set, else the file name (never a full local path).
        prompts: All prompts, in file order, exact duplicates removed.
        calibration: The prompts used to compute ``mu`` and the direction.
        heldout: The prompts kept for validation probes.
        sha256: Hash of ``prompts`` (JSON-encoded), recorded in the metadata.
        source: For a Hub dataset: its repository, the commit it was read at, config, split and column.
    """

    name: str
    prompts: tuple[str, ...]
    calibration: tuple[str, ...]
    heldout: tuple[str, ...]
    sha256: str
    source: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for ``bakesteer.json``."""
        out: dict[str, Any] = {
            "name": self.name,
            "sha256": self.sha256,
            "prompts": len(self.prompts),
            "calibration": len(self.calibration),
            "heldout": len(self.heldout),
        }
        if self.source is not None:
            out["source"] = self.source
        return out

    @property
    def pin(self) -> str | None:
        """The Hub commit a dataset set was read at (``None`` for a file or a shipped set)."""
        return self.source["revision"] if self.source else None


def _prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def make_prompt_set(name: str, prompts: list[str], source: dict[str, Any] | None = None) -> PromptSet:
    """Dedupe, check the size, and split by hash rank.

    The held-out part is the ``ceil(0.2 n)`` prompts with the smallest SHA-256, so the split does not depend on the
    order of the file and a prompt never moves between parts when others are added elsewhere in the ranking.

    Raises:
        PromptSetError: fewer than :data:`MIN_PROMPTS` distinct prompts.
    """
    unique = tuple(dict.fromkeys(p for p in (s.strip() for s in prompts) if p))
    if len(unique) < MIN_PROMPTS:
        raise PromptSetError(
            name,
            reason=f"has {len(unique)} distinct prompt(s), at least {MIN_PROMPTS} are needed",
            hint=f"add prompts (a few dozen give a stable direction); formats: {_FORMAT_HINT}",
        )
    n_heldout = math.ceil(HELDOUT_FRACTION * len(unique))
    ranked = sorted(unique, key=_prompt_hash)
    heldout_set = set(ranked[:n_heldout])
    digest = hashlib.sha256(json.dumps(list(unique), ensure_ascii=False).encode("utf-8")).hexdigest()
    return PromptSet(
        name=name,
        prompts=unique,
        calibration=tuple(p for p in unique if p not in heldout_set),
        heldout=tuple(p for p in unique if p in heldout_set),
        sha256=digest,
        source=source,
    )


def _pick_field(keys: list[str], path: Path) -> str:
    for candidate in TEXT_FIELDS:
        if candidate in keys:
            return candidate
    if len(keys) == 1:
        return keys[0]
    raise PromptSetError(
        path.name,
        reason=f"no prompt column among {keys}",
        hint=f"name the column one of {', '.join(TEXT_FIELDS)}",
    )


def parse_prompts(text: str, path: Path) -> list[str]:
    """Parse the text of a prompt file by its suffix (.txt, .jsonl, .csv)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [line for line in text.splitlines() if line.strip()]
    if suffix == ".jsonl":
        out: list[str] = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptSetError(
                    path.name, reason=f"line {number} is not JSON ({err.msg})", hint="write one JSON object a line"
                ) from None
            if not isinstance(record, dict):
                raise PromptSetError(path.name, reason=f"line {number} is not an object", hint="write objects")
            value = record.get(_pick_field(list(record), path))
            if not isinstance(value, str):
                raise PromptSetError(path.name, reason=f"line {number} has no text prompt", hint="use string fields")
            out.append(value)
        return out
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            return []
        column = _pick_field(list(reader.fieldnames), path)
        return [row[column] or "" for row in reader]
    raise PromptSetError(path.name, reason=f"unknown format {suffix or '(no suffix)'}", hint=f"use {_FORMAT_HINT}")


#: A prompt-set option: a file, a Hub dataset (``hf://datasets/...``, kept as text), or ``None`` (the shipped set).
PromptSource = Path | str | None


def load_prompt_set(path: PromptSource, role: str) -> PromptSet:
    """Load a user's prompt file (.txt, .jsonl, .csv, .parquet), a Hub dataset split (``hf://datasets/...``, see
    :mod:`bakesteer.prompt_sources`), or the shipped default for ``role`` (``positive``, ``negative`` or ``eval``).

    Raises:
        PromptSetError: missing, unreadable, unknown format, or too small.
    """
    from bakesteer.prompt_sources import is_hub_dataset, is_parquet, read_hub_dataset, read_parquet_file

    if path is None:
        filename = DEFAULT_SETS[role]
        text = resources.files("bakesteer.data").joinpath(filename).read_text(encoding="utf-8")
        return make_prompt_set(f"default:{filename}", text.splitlines())
    if is_hub_dataset(path):
        name, prompts, source = read_hub_dataset(str(path))
        return make_prompt_set(name, prompts, source)
    path = Path(path)
    if is_parquet(path):
        return make_prompt_set(*read_parquet_file(path))
    if not path.is_file():
        raise PromptSetError(path.name, reason="file not found", hint=f"check the {ROLE_FLAGS[role]} path")
    try:
        data = path.read_bytes()
    except OSError as err:
        reason = f"cannot read it ({err.strerror})"
        raise PromptSetError(path.name, reason=reason, hint="check its permissions") from None
    nul = data.find(b"\x00", 0, 65536)
    if nul >= 0:
        raise PromptSetError(
            path.name,
            reason=f"is binary, not text (a NUL byte at offset {nul})",
            hint=f"pass a text file: {_FORMAT_HINT}",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PromptSetError(
            path.name,
            reason=f"is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})",
            hint="save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from None
    return make_prompt_set(path.name, parse_prompts(text, path))


def render_prompts(
    tokenizer: Any,
    prompts: tuple[str, ...] | list[str],
    *,
    chat_template: bool,
    limit: int | None = None,
    name: str = "",
    system: str | None = None,
) -> list[list[int]]:
    """Token ids for each prompt (checked against the model's context ``limit`` when given, see
    :func:`check_lengths`; ``name`` is the set's name for the error).

    With ``chat_template`` and a tokenizer that has one, each prompt becomes a single user turn followed by the
    generation prompt; the template already writes the special tokens, so none are added again. Otherwise the
    tokenizer's own special tokens (e.g. BOS) are added to the raw text.

    A ``system`` prompt becomes a system turn before the user's; without a chat template it is written before the
    prompt, separated by a blank line.
    """
    templated = bool(chat_template and getattr(tokenizer, "chat_template", None))
    ids: list[list[int]] = []
    for prompt in prompts:
        if templated:
            turns = [{"role": "system", "content": system}] if system else []
            text = tokenizer.apply_chat_template(
                [*turns, {"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            ids.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        else:
            text = f"{system}\n\n{prompt}" if system else prompt
            ids.append(list(tokenizer(text, add_special_tokens=True)["input_ids"]))
    if limit:
        check_lengths(ids, tuple(prompts), name=name, limit=limit)
    return ids


def context_length(model: Any) -> int | None:
    """The longest sequence the model's positions allow (``max_position_embeddings``), if its config says."""
    config = model.config.get_text_config()
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if value else None


def check_lengths(ids: list[list[int]], prompts: PromptSet | tuple[str, ...], *, name: str, limit: int) -> None:
    """Refuse a prompt longer than the model's context (its tokens would be padded into every batch and the attention
    would be sized for it).

    Raises:
        PromptSetError: a prompt has more than ``limit`` tokens.
    """
    for index, row in enumerate(ids):
        if len(row) > limit:
            texts = prompts.prompts if isinstance(prompts, PromptSet) else prompts
            start = texts[index][:40].replace("\n", " ") if index < len(texts) else ""
            reason = f"the prompt starting {start!r} is {len(row)} tokens, longer than the model's context of {limit}"
            raise PromptSetError(name, reason=reason, hint="shorten or split it")


def reference_text() -> str:
    """The shipped neutral reference text (:data:`REFERENCE_TEXT`)."""
    return resources.files("bakesteer.data").joinpath(REFERENCE_TEXT).read_text(encoding="utf-8")


def prompt_hashes(options: Any) -> dict[str, str | None]:
    """SHA-256 of the positive, negative and eval prompt sets that ``options`` (a ``ConvertOptions``) names, as the
    fingerprint reads them.

    Raises:
        PromptSetError: a set cannot be read.
    """
    files = {"positive": options.positive, "negative": options.negative, "eval": options.eval_prompts}
    return {role: pinned_hash(load_prompt_set(path, role).describe()) for role, path in files.items()}


def pinned_hash(described: dict[str, Any]) -> str | None:
    """A set's hash as the fingerprint reads it: its SHA-256, and for a Hub dataset ``@`` the commit it was read at.

    Args:
        described: ``PromptSet.describe()``, as ``bakesteer.json`` records it.
    """
    sha = described.get("sha256")
    source = described.get("source")
    return f"{sha}@{source['revision']}" if sha and source else sha


def baseline_text(value: str) -> str:
    """``--baseline-prompt``: the text of the file it names, or the text itself.

    Raises:
        PromptSetError: an empty prompt, or a file that is not UTF-8.
    """
    path = Path(value)
    text = value
    if len(value) < 4096 and "\n" not in value and path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise PromptSetError(path.name, reason=f"cannot read it ({err})", hint="pass a UTF-8 text file") from None
    if not text.strip():
        raise PromptSetError(
            "--baseline-prompt", reason="is empty", hint="pass the system prompt, or a file holding it"
        )
    return text.strip()
