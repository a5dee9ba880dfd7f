"""An output directory's files: their names, the typed ``bakesteer.json`` record, and the one atomic writer.

Every module that reads an output reads it through :func:`read_output` (a local directory) or
:meth:`Record.from_json` (a record fetched from the Hub), so "not a bakesteer output" is decided in one place and
raises one error, :class:`~bakesteer.errors.NotAnOutputError`. Every file bakesteer writes outside a staged output
directory goes through :func:`atomic_path`: written to a hidden sibling and renamed into place, so a reader never
sees half a file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakesteer.errors import NotAnOutputError

#: The conversion record (options, hashes, validation report, fingerprint) beside the weights.
RECORD_FILE = "bakesteer.json"
#: ``mu`` and the unit directions of every layer (``bakesteer vector`` writes the same format).
VECTOR_FILE = "steering.safetensors"
#: The model card.
CARD_FILE = "README.md"
#: The card's plot of ``mu_l`` by layer.
MU_PLOT = "mu.png"
#: The ``--alpha auto`` sweep's plot (each metric against k, the chosen k marked).
SWEEP_PLOT = "sweep.png"
#: ``convert --eval``'s full report (the card and the record keep its summary).
EVAL_FILE = "evaluation.json"

#: The sections every record has; a JSON file without them is not a bakesteer record.
SECTIONS = ("bakesteer_version", "base_model", "architecture", "method", "calibration", "options", "output")


@dataclass(frozen=True)
class Record:
    """``bakesteer.json``, typed. ``data`` is the JSON object as written (kept whole, so that a record read and
    written again has the same bytes); the properties are the one way the rest of bakesteer reads it.

    Attributes:
        data: The parsed JSON object.
    """

    data: dict[str, Any]

    @classmethod
    def from_json(cls, text: str, *, where: str) -> Record:
        """Parse a record.

        Args:
            text: The file's contents.
            where: What to name in an error (a directory name, or ``repo@revision``).

        Raises:
            NotAnOutputError: not JSON, or a JSON object without the record's sections.
        """
        try:
            data = json.loads(text)
        except ValueError as err:
            raise NotAnOutputError(where, reason=f"{RECORD_FILE} is not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise NotAnOutputError(where, reason=f"{RECORD_FILE} is not a JSON object")
        missing = [name for name in SECTIONS if name not in data]
        if missing:
            raise NotAnOutputError(where, reason=f"{RECORD_FILE} has no {missing[0]!r} section")
        return cls(data)

    def to_json(self) -> str:
        """The file's text: indented, key-sorted JSON with a trailing newline."""
        return dumps(self.data)

    @property
    def version(self) -> str:
        """The bakesteer version that wrote the output."""
        return str(self.data["bakesteer_version"])

    @property
    def base_model(self) -> dict[str, Any]:
        """The source: ``kind`` (hub, local, gguf), ``model_id``, ``revision`` and, for a GGUF, its file."""
        return dict(self.data["base_model"])

    @property
    def model_type(self) -> str:
        """The source's ``model_type``."""
        return str(self.data["architecture"]["model_type"])

    @property
    def strategy(self) -> str:
        """How the bias is carried (``native``, ``enable_flag``, ``remap``, ``remote_code``)."""
        return str(self.data["architecture"]["strategy"])

    @property
    def runtimes(self) -> list[str]:
        """The runtimes the registry says run this family with its biases."""
        return list(self.data["architecture"].get("runtimes", []))

    @property
    def k(self) -> float:
        """The strength ``k`` that was baked."""
        return float(self.data["method"]["k"])

    @property
    def band(self) -> tuple[int, int]:
        """``(start, end)`` of the steered layers, end excluded."""
        band = self.data["method"]["band"]
        return int(band["start"]), int(band["end_exclusive"])

    @property
    def num_layers(self) -> int:
        """The model's number of layers."""
        return int(self.data["method"]["num_layers"])

    @property
    def dtype(self) -> str:
        """The dtype the output was written in (``bfloat16``, ``float32``, ...)."""
        return str(self.data["output"]["dtype"])

    @property
    def options(self) -> dict[str, Any]:
        """The options that shaped the output (:meth:`~bakesteer.options.ConvertOptions.record`)."""
        return dict(self.data["options"])

    @property
    def chat_template(self) -> bool:
        """Whether prompts were rendered with the chat template."""
        return bool(self.data["options"].get("chat_template", True))

    @property
    def calibration(self) -> dict[str, Any]:
        """The calibration's prompt-set summaries (``positive``, ``negative``: counts and SHA-256)."""
        return dict(self.data["calibration"])

    @property
    def passed(self) -> bool:
        """Whether the output passed validation."""
        return bool(self.data.get("validation", {}).get("passed"))

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of what shaped the weights (``None`` in a record that has none)."""
        value = self.data.get("fingerprint")
        return None if value is None else str(value)

    @property
    def method(self) -> dict[str, Any]:
        """The ``method`` section: formula, k, band, ``mu``, offset norms."""
        return dict(self.data["method"])

    @property
    def architecture(self) -> dict[str, Any]:
        """The ``architecture`` section: model type, strategy, runtimes, config updates."""
        return dict(self.data["architecture"])

    @property
    def validation(self) -> dict[str, Any]:
        """The validation report (empty in a record written before validation)."""
        return dict(self.data.get("validation") or {})

    @property
    def readers(self) -> dict[str, Any] | None:
        """Where the output was checked to load (``loads_in``) and the oldest transformers that reads it."""
        return self.data.get("readers")

    @property
    def sweep(self) -> dict[str, Any] | None:
        """The ``--alpha auto`` sweep (grid, rule, decisions, runs), when k was chosen by one."""
        return self.data.get("sweep")

    @property
    def evaluation(self) -> dict[str, Any] | None:
        """``--eval``'s summary, when it ran."""
        return self.data.get("evaluation")

    @property
    def files(self) -> set[str] | None:
        """The files the output consists of (what a later push may delete); ``None`` when not recorded."""
        files = self.data.get("files")
        return {str(f) for f in files} if isinstance(files, list) else None


@dataclass(frozen=True)
class Output:
    """A bakesteer output directory, read.

    Attributes:
        directory: The directory.
        record: Its ``bakesteer.json``.
    """

    directory: Path
    record: Record

    @property
    def vector_path(self) -> Path:
        """Its ``steering.safetensors``."""
        return self.directory / VECTOR_FILE


def read_output(directory: Path, *, vector: bool = True) -> Output:
    """Read a bakesteer output directory.

    Args:
        directory: The directory ``bakesteer convert`` wrote.
        vector: Also require ``steering.safetensors`` (measuring and exporting need it; pushing does not).

    Raises:
        NotAnOutputError: no such directory, no (readable) ``bakesteer.json``, or no ``steering.safetensors``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NotAnOutputError(directory.name, reason="no such directory")
    path = directory / RECORD_FILE
    if not path.is_file():
        raise NotAnOutputError(directory.name, reason=f"no {RECORD_FILE}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise NotAnOutputError(directory.name, reason=f"{RECORD_FILE} cannot be read ({err})") from None
    record = Record.from_json(text, where=directory.name)
    if vector and not (directory / VECTOR_FILE).is_file():
        raise NotAnOutputError(directory.name, reason=f"no {VECTOR_FILE}")
    return Output(directory, record)


def dumps(data: dict[str, Any]) -> str:
    """bakesteer's JSON layout: indented, key-sorted, a trailing newline."""
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A hidden sibling of ``target`` to write; renamed onto ``target`` when the block ends without an error, removed
    otherwise. The sibling is in the same directory, so the rename is atomic."""
    target = Path(target)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        yield partial
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8")


def write_json(path: Path, data: dict[str, Any], *, sort_keys: bool = True) -> None:
    """Write ``data`` as indented JSON with a trailing newline, atomically (key-sorted unless ``sort_keys=False``)."""
    text = dumps(data) if sort_keys else json.dumps(data, indent=2, default=str) + "\n"
    write_text(path, text)
